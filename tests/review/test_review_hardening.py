"""The console as an attacker and an operator try it over plain HTTP (issue 17): sessions
that end on a password change or a disabled account, sign-in throttling that a burst or a
forged X-Forwarded-For cannot beat, GET that changes nothing, sign-out that needs the token,
blind stats, production settings, and the database role check."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
from review_support import RA_PASSWORD, FlaggedItem, RAClient, db_rows, http, seed_flagged

from review import accounts, passwords
from review.settings import ReviewSettings, SettingsError
from review.store import ReviewStore, UnsafeDatabaseRole


@pytest.fixture
def items(results_db, object_store, opus_bytes, ras):
    return seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem(f"h{n}.mp3") for n in range(3)])


@pytest.fixture
def lead(results_db) -> str:
    accounts.add_user(results_db, "lena", RA_PASSWORD, role="lead")
    return "lena"


# --- sessions -------------------------------------------------------------------------------------


def test_a_new_password_ends_every_session(start_console, results_db, ras):
    server = start_console()
    first, second = RAClient(server.url), RAClient(server.url)
    assert first.sign_in("alice") == second.sign_in("alice") == 303
    accounts.set_password(results_db, "alice", "a brand new password")
    for client in (first, second):
        assert client.get("/queue")[1]["Location"] == "/sign-in"
    assert RAClient(server.url).sign_in("alice") == 401  # the old password is gone
    assert RAClient(server.url).sign_in("alice", "a brand new password") == 303


def test_set_password_never_enables_and_enable_brings_no_session_back(start_console, results_db, ras):
    server = start_console()
    alice = RAClient(server.url)
    assert alice.sign_in("alice") == 303
    accounts.disable_user(results_db, "alice")
    assert alice.get("/queue")[1]["Location"] == "/sign-in"
    assert accounts.set_password(results_db, "alice", "another long password") is True  # still disabled
    assert alice.get("/queue")[1]["Location"] == "/sign-in"
    assert RAClient(server.url).sign_in("alice", "another long password") == 401
    accounts.enable_user(results_db, "alice")
    assert alice.get("/queue")[1]["Location"] == "/sign-in"  # the old cookie stays dead
    assert RAClient(server.url).sign_in("alice", "another long password") == 303


def test_a_sign_in_elsewhere_is_listed_and_can_be_ended(start_console, ras):
    server = start_console()
    here, elsewhere = RAClient(server.url), RAClient(server.url)
    here.sign_in("alice")
    elsewhere.sign_in("alice", headers={"User-Agent": "Mallory's <b>browser</b>"})
    status, _, body = here.get("/queue")
    assert status == 200 and b"1 other session" in body
    status, _, body = here.get("/sessions")
    assert body.count(b"<tr") == 3 and b"Mallory&#39;s &lt;b&gt;browser&lt;/b&gt;" in body
    assert here.post("/sessions/end-others")[0] == 303
    assert elsewhere.get("/queue")[1]["Location"] == "/sign-in"
    assert here.get("/queue")[0] == 200


# --- sign-in throttling ---------------------------------------------------------------------------


def test_a_burst_of_wrong_passwords_gets_five_argon2_checks(start_console, ras, monkeypatch):
    """Issue 17: of 40 concurrent wrong passwords, 25-26 reached argon2 against a cap of 5."""
    checks, running, most = [], [0], [0]
    lock = threading.Lock()
    real_verify = passwords.verify_password

    def counted(password_hash, password):
        with lock:
            checks.append(password)
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return real_verify(password_hash, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr("review.auth.verify_password", counted)
    server = start_console()  # two argon2 checks at once by default
    clients = [RAClient(server.url) for _ in range(40)]
    tokens = []
    for client in clients:  # each with its own sign-in form token, as 40 browsers would have
        _, _, body = client.get("/sign-in")
        tokens.append(body.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode())
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        statuses = list(
            pool.map(
                lambda ct: ct[0].post(
                    "/sign-in",
                    {"csrf_token": ct[1], "username": "alice", "password": "wrong password!"},
                    with_token=False,
                )[0],
                zip(clients, tokens),
            )
        )
    assert len(checks) <= 5, f"{len(checks)} argon2 verifications"
    assert most[0] <= 2
    assert sorted(set(statuses)) == [401, 429] and statuses.count(401) == len(checks)


def test_a_stranger_cannot_lock_an_ra_out(start_console, ras):
    """Failures count per (account, client): someone else's wrong guesses lock out them only."""
    server = start_console(trusted_proxies=("127.0.0.1/32",))
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    for _ in range(5):
        assert RAClient(server.url).sign_in("alice", "wrong password!", headers=attacker) == 401
    assert RAClient(server.url).sign_in("alice", RA_PASSWORD, headers=attacker) == 429
    assert RAClient(server.url).sign_in("alice", RA_PASSWORD, headers={"X-Forwarded-For": "198.51.100.7"}) == 303


def test_forwarded_for_is_ignored_unless_from_a_trusted_proxy(start_console, results_db):
    """Issue 17: behind loopback, varying X-Forwarded-For dodged the per-address limit: one
    address could spray wrong passwords over any number of accounts."""
    server = start_console()  # no trusted proxies: the peer address is the client, whatever the header says
    names = [f"user{n:02d}" for n in range(24)]

    def spray(n: int) -> int:
        return RAClient(server.url).sign_in(names[n], "wrong password!", headers={"X-Forwarded-For": f"10.0.0.{n}"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(spray, range(len(names))))
    assert statuses.count(401) == 20 and statuses.count(429) == 4  # the per-client cap


def test_the_client_address_behind_a_trusted_proxy_is_the_last_untrusted_hop(start_console, ras):
    server = start_console(trusted_proxies=("127.0.0.1/32",))
    alice = RAClient(server.url)
    # A client-supplied first hop is ignored: the proxy appended the real address last.
    alice.sign_in("alice", headers={"X-Forwarded-For": "1.2.3.4, 192.0.2.55"})
    _, _, body = alice.get("/sessions")
    assert b"192.0.2.55" in body and b"1.2.3.4" not in body


# --- GET changes nothing; claims by POST ----------------------------------------------------------


def test_opening_an_item_does_not_claim_it(start_console, items, results_db):
    """Issue 17: a GET (a link, an <img>, a cross-site navigation) claimed items."""
    server = start_console(double_coding_percent=0)
    alice, bob = RAClient(server.url), RAClient(server.url)
    alice.sign_in("alice")
    bob.sign_in("bob")
    item = items["h0.mp3"].item_id
    status, _, body = alice.get(f"/items/{item}")
    assert status == 200 and b'id="claim-form"' in body and b'id="decision-form"' not in body
    assert db_rows(results_db, "SELECT count(*) AS n FROM ra_claims")[0]["n"] == 0
    assert bob.get(f"/items/{item}")[0] == 200  # still free for anyone
    assert alice.post(f"/items/{item}/claim", with_token=False)[0] == 403  # no token, no claim
    status, headers, _ = alice.post(f"/items/{item}/claim")
    assert status == 303 and headers["Location"].startswith(f"/items/{item}")
    status, _, body = alice.get(f"/items/{item}")
    assert b'id="decision-form"' in body
    assert bob.get(f"/items/{item}")[0] == 409


def test_a_refused_decision_on_an_item_another_ra_holds_answers_409(start_console, items, results_db):
    """Issue 26: the decision form's 422 (no decision, or no reason) re-rendered an item another
    RA holds, transcript and all, where the item's own page answers 409."""
    server = start_console(double_coding_percent=0)
    alice, bob = RAClient(server.url), RAClient(server.url)
    alice.sign_in("alice")
    bob.sign_in("bob")
    held, own = items["h0.mp3"].item_id, items["h1.mp3"].item_id
    alice.post(f"/items/{held}/claim")
    assert bob.get(f"/items/{held}")[0] == 409
    for form in ({"decision": "", "policy_version": "v1"}, {"decision": "violates", "policy_version": "v1"}):
        status, _, body = bob.post(f"/items/{held}/decision", form)
        assert status == 409 and b"Item taken" in body and b"first words here" not in body
    bob.post(f"/items/{own}/claim")  # his own item: the form comes back with what is missing
    status, _, body = bob.post(f"/items/{own}/decision", {"decision": "violates", "policy_version": "v1"})
    assert status == 422 and b"A reason is required" in body and b"first words here" in body
    assert db_rows(results_db, "SELECT count(*) AS n FROM ra_decisions")[0]["n"] == 0


def test_the_old_get_routes_for_neighbours_are_gone(start_console, items):
    server = start_console()
    alice = RAClient(server.url)
    alice.sign_in("alice")
    assert alice.get(f"/items/{items['h0.mp3'].item_id}/next")[0] == 405


def test_deciding_claims_and_opens_the_next_item(start_console, items, results_db):
    server = start_console(double_coding_percent=0)
    alice = RAClient(server.url)
    alice.sign_in("alice")
    first, second = items["h0.mp3"].item_id, items["h1.mp3"].item_id
    alice.post(f"/items/{first}/claim")
    status, headers, _ = alice.post(
        f"/items/{first}/decision", {"decision": "does_not_violate", "policy_version": "v1"}
    )
    assert status == 303 and headers["Location"].startswith(f"/items/{second}")
    claims = db_rows(results_db, "SELECT item_id FROM ra_claims ORDER BY id")
    assert [c["item_id"] for c in claims] == [first, second]


# --- sign-out -------------------------------------------------------------------------------------


def test_sign_out_without_the_token_changes_nothing(start_console, ras):
    """Issue 17: a cross-site form POST deleted the cookie and left the server session alive."""
    server = start_console()
    alice = RAClient(server.url)
    alice.sign_in("alice")
    cookie = {"Cookie": f"ra_session={alice.cookies['ra_session']}"}
    status, headers, _ = http(
        f"{server.url}/sign-out", method="POST", data=b"", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 403 and "Set-Cookie" not in headers  # no session sent: nothing to delete
    status, headers, _ = http(
        f"{server.url}/sign-out",
        method="POST",
        data=b"csrf_token=forged",
        headers={**cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403 and "Set-Cookie" not in headers
    assert alice.get("/queue")[0] == 200


def test_sign_out_ends_the_session_and_deletes_the_cookie_as_it_was_set(start_console, ras):
    server = start_console(secure_cookies=True)
    alice = RAClient(server.url, secure=True)
    assert alice.sign_in("alice") == 303
    token = alice.cookies["__Host-ra_session"]
    status, headers, _ = alice.post("/sign-out")
    assert status == 303
    (deletion,) = [h for h in headers.get_all("Set-Cookie") if h.startswith("__Host-ra_session=")]
    for attribute in ("Max-Age=0", "Path=/", "Secure", "HttpOnly", "SameSite=lax"):
        assert attribute in deletion
    replay = http(f"{server.url}/queue", headers={"Cookie": f"__Host-ra_session={token}"})
    assert replay[1]["Location"] == "/sign-in"


def test_the_sign_in_cookie_has_the_host_prefix_when_secure(start_console, ras):
    server = start_console(secure_cookies=True)
    _, headers, _ = http(f"{server.url}/sign-in")
    (cookie,) = headers.get_all("Set-Cookie")
    assert cookie.startswith("__Host-ra_sign_in_csrf=") and "Secure" in cookie and "Path=/" in cookie


def test_posts_a_browser_marks_as_from_another_site_are_refused(start_console, ras):
    server = start_console()
    alice = RAClient(server.url)
    alice.sign_in("alice")
    for site in ("same-site", "cross-site"):
        status, _, _ = alice.post("/sessions/end-others", headers={"Sec-Fetch-Site": site})
        assert status == 403
    assert alice.post("/sessions/end-others", headers={"Sec-Fetch-Site": "same-origin"})[0] == 303


# --- blindness on /stats -------------------------------------------------------------------------


def test_stats_keep_double_coding_blind(start_console, results_db, object_store, opus_bytes, ras, lead):
    """Issue 17: bob's stats showed alice's decision on an item he had still to code, and
    the agreement table showed whether his decision matched hers."""
    items = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem("shared.mp3")])
    shared = items["shared.mp3"].item_id
    server = start_console(double_coding_percent=100)
    alice, bob, lena = RAClient(server.url), RAClient(server.url), RAClient(server.url)
    for client, name in ((alice, "alice"), (bob, "bob"), (lena, "lena")):
        client.sign_in(name)
    alice.post(f"/items/{shared}/claim")
    alice.post(f"/items/{shared}/decision", {"decision": "violates", "reason": "threat", "policy_version": "v1"})

    _, _, before = bob.get("/stats")
    assert b"alice" not in before and b'id="agreement"' not in before and b'id="per-ra"' not in before
    assert b"You have not decided anything yet" in before and b"No figures yet" in before
    bob.post(f"/items/{shared}/claim")
    bob.post(f"/items/{shared}/decision", {"decision": "does_not_violate", "policy_version": "v1"})
    _, _, after = bob.get("/stats")
    assert b"alice" not in after and b'id="agreement"' not in after
    assert b"No figures yet" in after  # the shared item is his: never in his team figures
    assert bob.get("/calibration")[0] == 403

    _, _, lead_view = lena.get("/stats")
    assert b"alice" in lead_view and b"bob" in lead_view and b'id="agreement"' in lead_view
    # carol never coded it and cannot any more: it counts in her team figures
    carol = RAClient(server.url)
    carol.sign_in("carol")
    _, _, carols = carol.get("/stats")
    assert b"harassment_threats" in carols and b"alice" not in carols


# --- settings and the database role ----------------------------------------------------------------

BASE = {"REVIEW_DATABASE_DSN": "x", "S3_ACCESS_KEY": "pipeline-key", "S3_SECRET_KEY": "pipeline-secret"}


def test_production_refuses_insecure_cookies_and_the_pipelines_s3_key():
    production = {**BASE, "AUDIO_PIPELINE_ENV": "production"}
    with pytest.raises(SettingsError, match="REVIEW_S3_ACCESS_KEY"):
        ReviewSettings.from_environment(production)  # falls back to the pipeline's key
    with pytest.raises(SettingsError, match="pipeline's S3_ACCESS_KEY"):
        ReviewSettings.from_environment(
            {**production, "REVIEW_S3_ACCESS_KEY": "pipeline-key", "REVIEW_S3_SECRET_KEY": "pipeline-secret"}
        )
    read_only = {**production, "REVIEW_S3_ACCESS_KEY": "reader", "REVIEW_S3_SECRET_KEY": "reader-secret"}
    with pytest.raises(SettingsError, match="REVIEW_SECURE_COOKIES"):
        ReviewSettings.from_environment({**read_only, "REVIEW_SECURE_COOKIES": "false"})
    settings = ReviewSettings.from_environment(read_only)
    assert settings.secure_cookies and settings.s3_access_key == "reader"
    # Local keeps the developer's conveniences.
    assert ReviewSettings.from_environment({**BASE, "REVIEW_SECURE_COOKIES": "false"}).s3_access_key == "pipeline-key"


def test_pool_size_is_checked_against_the_worker_threads():
    with pytest.raises(SettingsError, match="REVIEW_WORKER_THREADS"):
        ReviewSettings.from_environment({**BASE, "REVIEW_WORKER_THREADS": "4", "REVIEW_DB_CONNECTIONS": "8"})


EXTRA_PRIVILEGES = [
    "GRANT SELECT ON audio_files TO {role}",
    "GRANT SELECT (original_filename) ON audio_files TO {role}",
    "GRANT UPDATE ON ra_claims TO {role}",
    "GRANT DELETE ON ra_sessions TO {role}",
    "GRANT SELECT ON ra_queue TO {role}",
    "GRANT USAGE ON SEQUENCE audio_files_id_seq TO {role}",
    "GRANT CREATE ON SCHEMA public TO {role}",
    "GRANT ra_reader TO {role}",
    "GRANT pg_read_all_data TO {role}",
    "ALTER ROLE {role} CREATEROLE",
]


@pytest.mark.parametrize("grant", EXTRA_PRIVILEGES)
def test_the_role_check_refuses_any_privilege_beyond_ra_app(console_dsn, results_db, grant):
    """Issue 17: the check read one table's privilege; any other grant went unnoticed."""
    role = dict(part.split("=", 1) for part in console_dsn.split())["user"]
    ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=1).check_role()  # as made: accepted
    results_db.transaction(lambda cur: cur.execute(grant.format(role=f'"{role}"')))
    store = ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=1)
    with pytest.raises(UnsafeDatabaseRole, match="also has"):
        store.check_role()
    store.close()
