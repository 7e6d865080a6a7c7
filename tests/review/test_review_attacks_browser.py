"""Attacks from a page on another port of the same host, in a real browser (Debian's Chromium
through Playwright), issue 17. Cookies are not isolated by port, and such a page is
"same-site": SameSite=Lax cookies go with its requests and its scripts can set cookies for the
host, __Host- ones included on loopback. None of it may claim an item, end a session or sign
the victim's browser in as the attacker."""

from __future__ import annotations

import http.server
import threading

import pytest
from review_support import RA_PASSWORD, FlaggedItem, db_rows, seed_flagged

from review import accounts

pytestmark = pytest.mark.integration


class AttackerSite:
    """One HTML page on a free loopback port: another origin of the same site as the console
    (host 127.0.0.1), or another site altogether (host localhost)."""

    def __init__(self, html: str, host: str = "127.0.0.1"):
        page = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _sign_in(page, url: str, username: str) -> None:
    page.goto(f"{url}/sign-in")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", RA_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/queue")


def _cookie_names(context) -> set[str]:
    return {c["name"] for c in context.cookies()}


@pytest.mark.parametrize(
    ("attacker_host", "secure"),
    [("127.0.0.1", False), ("127.0.0.1", True), ("localhost", False)],
    ids=["same-site", "same-site-secure-cookies", "cross-site"],
)
def test_a_page_on_another_port_cannot_claim_items_or_sign_the_ra_out(
    browser, start_console, results_db, object_store, opus_bytes, ras, attacker_host, secure
):
    """Issue 17: an <img> or a navigation from another port claimed items (GET claimed), and a
    cross-site form POST to /sign-out deleted the cookie and left the session alive."""
    item = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem("victim.mp3")])["victim.mp3"].item_id
    server = start_console(secure_cookies=secure)
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, server.url, "alice")
    session_cookie = "__Host-ra_session" if secure else "ra_session"
    attacker = AttackerSite(
        f"""<!doctype html><html><body>
      <img src="{server.url}/items/{item}" onerror="document.title='img done'">
      <form id="out" method="post" action="{server.url}/sign-out"><input name="csrf_token" value="guess"></form>
      <script>
        setTimeout(() => document.getElementById('out').submit(), 300);
      </script></body></html>""",
        host=attacker_host,
    )
    try:
        page.goto(attacker.url)
        page.wait_for_url(f"{server.url}/**", timeout=10_000)  # the forged sign-out was sent
        assert "cross-site request refused" in page.content()
        page.goto(f"{server.url}/items/{item}")  # a top-level navigation, as a link would make
    finally:
        attacker.close()
    assert db_rows(results_db, "SELECT count(*) AS n FROM ra_claims")[0]["n"] == 0
    assert db_rows(results_db, "SELECT count(*) AS n FROM ra_session_ends")[0]["n"] == 0
    assert session_cookie in _cookie_names(context)
    page.goto(f"{server.url}/queue")
    assert page.url.endswith("/queue")
    assert page.locator("table.queue tr[data-item-id]").count() == 1  # still free to claim
    context.close()


def test_login_csrf_from_another_port_does_not_sign_the_victim_in(browser, start_console, results_db, ras):
    """Issue 17: the sign-in double-submit cookie had no __Host- prefix, so a page on another
    port set its own value and posted the attacker's credentials with it."""
    accounts.add_user(results_db, "mallory", RA_PASSWORD)
    server = start_console(secure_cookies=True)
    context = browser.new_context()
    page = context.new_page()
    attacker = AttackerSite(f"""<!doctype html><html><body>
      <form id="in" method="post" action="{server.url}/sign-in">
        <input name="csrf_token" value="planted-token"><input name="username" value="mallory">
        <input name="password" value="{RA_PASSWORD}"></form>
      <script>
        document.cookie = "ra_sign_in_csrf=planted-token; path=/";
        document.cookie = "__Host-ra_sign_in_csrf=planted-token; path=/; secure";
        document.getElementById('in').submit();
      </script></body></html>""")
    try:
        page.goto(attacker.url)
        page.wait_for_url(f"{server.url}/**", timeout=10_000)  # the forged sign-in was posted
    finally:
        attacker.close()
    assert "__Host-ra_session" not in _cookie_names(context)
    assert db_rows(results_db, "SELECT count(*) AS n FROM ra_sessions")[0]["n"] == 0
    page.goto(f"{server.url}/queue")
    assert page.url.endswith("/sign-in")
    context.close()


def test_sign_out_removes_the_secure_session_cookie_from_chromium(browser, start_console, ras):
    """Issue 17: with Secure cookies the deletion omitted Secure, and Chromium kept
    __Host-ra_session."""
    server = start_console(secure_cookies=True)
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, server.url, "alice")
    assert "__Host-ra_session" in _cookie_names(context)
    page.click("header .sign-out button")
    page.wait_for_url("**/sign-in")
    assert "__Host-ra_session" not in _cookie_names(context)
    page.goto(f"{server.url}/queue")
    assert page.url.endswith("/sign-in")
    context.close()
