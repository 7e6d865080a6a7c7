"""The console over plain HTTP, as a client that is not a browser sees it: nothing without a
session, CSRF on every POST, slowed and refused repeated sign-ins, sign-out that really ends
the session, and audio served with HTTP Range."""

from __future__ import annotations

import re
import urllib.parse
from http.cookies import SimpleCookie

import pytest
from review_support import RA_PASSWORD, FlaggedItem, db_rows, http, seed_flagged


@pytest.fixture
def console(start_console, results_db, object_store, opus_bytes, ras):
    items = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem("clip.mp3")])
    return start_console(), items["clip.mp3"]


def _cookies(headers) -> dict[str, str]:
    jar = SimpleCookie()
    for header in headers.get_all("Set-Cookie") or []:
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


def _form(fields: dict) -> bytes:
    return urllib.parse.urlencode(fields).encode()


def sign_in(url: str, username: str, password: str):
    """(status, session cookie header) after the sign-in form, as a browser would post it."""
    status, headers, body = http(f"{url}/sign-in")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
    cookie = f"ra_sign_in_csrf={_cookies(headers)['ra_sign_in_csrf']}"
    status, headers, _ = http(
        f"{url}/sign-in",
        method="POST",
        headers={"Cookie": cookie},
        data=_form({"csrf_token": token, "username": username, "password": password}),
    )
    session = _cookies(headers).get("ra_session")
    return status, (f"ra_session={session}" if session else None), headers


def test_nothing_is_served_without_a_session(console):
    server, item = console
    for path in ("/", "/queue", f"/items/{item.item_id}", "/search?q=words", "/stats", "/sessions", "/calibration"):
        status, headers, _ = http(server.url + path)
        assert (status, headers["Location"]) == (303, "/sign-in"), path
    status, _, body = http(f"{server.url}/audio/{item.audio_file_id}", headers={"Range": "bytes=0-99"})
    assert status == 401 and b"OggS" not in body
    status, headers, _ = http(
        f"{server.url}/items/{item.item_id}/decision",
        method="POST",
        data=_form({"decision": "violates", "reason": "x"}),
    )
    assert status == 303 and headers["Location"] == "/sign-in"


def test_session_cookie_flags_and_security_headers(start_console, ras):
    server = start_console()
    status, cookie, headers = sign_in(server.url, "alice", RA_PASSWORD)
    assert status == 303 and cookie
    (set_cookie,) = [h for h in headers.get_all("Set-Cookie") if h.startswith("ra_session=")]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie and "Path=/" in set_cookie
    _, page_headers, body = http(f"{server.url}/queue", headers={"Cookie": cookie})
    assert "script-src 'self'" in page_headers["Content-Security-Policy"]
    assert page_headers["X-Content-Type-Options"] == "nosniff"
    assert RA_PASSWORD.encode() not in body


def test_secure_cookies_use_the_host_prefix(start_console, ras):
    server = start_console(secure_cookies=True)
    status, headers, body = http(f"{server.url}/sign-in")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
    assert "Secure" in headers["Set-Cookie"]
    csrf_cookie = f"__Host-ra_sign_in_csrf={_cookies(headers)['__Host-ra_sign_in_csrf']}"
    status, headers, _ = http(
        f"{server.url}/sign-in",
        method="POST",
        headers={"Cookie": csrf_cookie},
        data=_form({"csrf_token": token, "username": "alice", "password": RA_PASSWORD}),
    )
    session_cookie = [h for h in headers.get_all("Set-Cookie") if h.startswith("__Host-ra_session=")]
    assert status == 303 and session_cookie and "Secure" in session_cookie[0]


def test_posts_without_the_csrf_token_are_refused(console, results_db):
    server, item = console
    _, cookie, _ = sign_in(server.url, "alice", RA_PASSWORD)
    http(f"{server.url}/items/{item.item_id}", headers={"Cookie": cookie})  # open it (read-only)
    for token in ("", "forged"):
        status, _, _ = http(
            f"{server.url}/items/{item.item_id}/decision",
            method="POST",
            headers={"Cookie": cookie},
            data=_form({"decision": "violates", "reason": "x", "policy_version": "v1", "csrf_token": token}),
        )
        assert status == 403
    status, _, _ = http(f"{server.url}/sign-out", method="POST", headers={"Cookie": cookie}, data=_form({}))
    assert status == 403
    assert db_rows(results_db, "SELECT count(*) AS n FROM ra_decisions")[0]["n"] == 0
    # The sign-in form's own token: a forged one is refused before any password check.
    status, _, _ = http(
        f"{server.url}/sign-in",
        method="POST",
        headers={"Cookie": "ra_sign_in_csrf=a"},
        data=_form({"csrf_token": "b", "username": "alice", "password": RA_PASSWORD}),
    )
    assert status == 403


def test_sign_out_ends_the_session_server_side(console):
    server, _ = console
    _, cookie, _ = sign_in(server.url, "alice", RA_PASSWORD)
    _, _, body = http(f"{server.url}/queue", headers={"Cookie": cookie})
    token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
    status, headers, _ = http(
        f"{server.url}/sign-out", method="POST", headers={"Cookie": cookie}, data=_form({"csrf_token": token})
    )
    assert (status, headers["Location"]) == (303, "/sign-in")
    # The old cookie, replayed, signs nobody in.
    status, headers, _ = http(f"{server.url}/queue", headers={"Cookie": cookie})
    assert (status, headers["Location"]) == (303, "/sign-in")


def test_failed_sign_ins_are_slowed_then_refused(console):
    server, _ = console
    for _ in range(5):
        status, cookie, _ = sign_in(server.url, "alice", "wrong password!")
        assert status == 401 and cookie is None
    # Now even the right password is refused for a while: guessing is capped.
    status, cookie, _ = sign_in(server.url, "alice", RA_PASSWORD)
    assert status == 429 and cookie is None
    # Another account from the same client is still allowed (the per-client cap is higher).
    status, cookie, _ = sign_in(server.url, "bob", RA_PASSWORD)
    assert status == 303 and cookie


def test_unknown_user_and_wrong_password_get_the_same_answer(console):
    server, _ = console
    unknown = sign_in(server.url, "nobody", RA_PASSWORD)
    wrong = sign_in(server.url, "carol", "not the password")
    assert unknown[0] == wrong[0] == 401


def test_audio_is_served_with_http_range(console, opus_bytes):
    server, item = console
    _, cookie, _ = sign_in(server.url, "alice", RA_PASSWORD)
    url = f"{server.url}/audio/{item.audio_file_id}"
    status, headers, body = http(url, headers={"Cookie": cookie})
    assert status == 200 and body == opus_bytes and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "audio/ogg"
    status, headers, body = http(url, headers={"Cookie": cookie, "Range": "bytes=100-199"})
    assert status == 206 and body == opus_bytes[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(opus_bytes)}"
    status, _, body = http(url, headers={"Cookie": cookie, "Range": "bytes=-50"})
    assert status == 206 and body == opus_bytes[-50:]
    status, headers, _ = http(url, headers={"Cookie": cookie, "Range": f"bytes={len(opus_bytes)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(opus_bytes)}"
    status, _, _ = http(f"{server.url}/audio/999999", headers={"Cookie": cookie})
    assert status == 404
