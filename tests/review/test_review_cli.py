"""`audio-pipeline review-user | review-db-login | review` against the real test services."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
from review_support import db_rows, http

from embedded_services.ports import free_tcp_ports
from operations.cli import main
from review.passwords import verify_password
from review.store import ReviewStore
from sql.migrate import bundled_migrations


def test_review_user_add_set_password_and_disable(cli_env, results_db, console_dsn, monkeypatch, capsys):
    store = ReviewStore(console_dsn, double_coding_percent=0, claim_minutes=1)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert main(["review-user", "add", "dora", "--password-stdin"]) == 0
    assert verify_password(store.account("dora")["password_hash"], "a long enough password")
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["review-user", "set-password", "dora", "--password-stdin"]) == 1
    assert "at least 12" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("another long password\n"))
    assert main(["review-user", "add", "dora", "--password-stdin"]) == 1  # exists
    assert main(["review-user", "disable", "dora"]) == 0
    assert store.account("dora") is None  # a disabled account cannot sign in
    # A new password never enables the account (issue 17): that takes `enable`.
    monkeypatch.setattr(sys, "stdin", io.StringIO("a third long password\n"))
    assert main(["review-user", "set-password", "dora", "--password-stdin"]) == 0
    assert "stays disabled" in capsys.readouterr().out
    assert store.account("dora") is None
    assert main(["review-user", "enable", "dora"]) == 0
    assert verify_password(store.account("dora")["password_hash"], "a third long password")
    assert main(["review-user", "set-role", "dora", "--role", "lead"]) == 0
    assert store.account("dora")["role"] == "lead"
    assert main(["review-user", "enable", "nobody"]) == 1
    store.close()
    # Stored as argon2id, never as the password.
    (row,) = db_rows(results_db, "SELECT password_hash FROM ra_users WHERE username = 'dora'")
    assert row["password_hash"].startswith("$argon2id$") and "long enough" not in row["password_hash"]


def test_review_db_login_makes_a_role_the_console_accepts(cli_env, results_db, capsys):
    role = f"console_{os.getpid()}_{int(time.time())}"
    try:
        assert main(["review-db-login", role]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("REVIEW_DATABASE_DSN=")
        store = ReviewStore(line.partition("=")[2], double_coding_percent=0, claim_minutes=1)
        store.check_role()  # member of ra_app, no superuser, no table privileges
        store.close()
    finally:
        with results_db.open_connection() as conn, conn, conn.cursor() as cur:
            cur.execute(f'DROP OWNED BY "{role}"')
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize("existing", ["pipeline-owner", "made-by-hand"])
def test_review_db_login_refuses_roles_it_did_not_create(cli_env, results_db, capsys, existing):
    """Issue 17: it ran ALTER ROLE ... NOSUPERUSER PASSWORD on whatever name it was given,
    the pipeline's own role included."""
    if existing == "pipeline-owner":
        role = db_rows(results_db, "SELECT current_user AS name")[0]["name"]
    else:
        role = f"by_hand_{os.getpid()}_{int(time.time())}"
        results_db.transaction(lambda cur: cur.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE ra_app'))
    before = db_rows(results_db, "SELECT rolsuper, rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    try:
        assert main(["review-db-login", role]) == 1
        assert "was not created by `review-db-login`" in capsys.readouterr().err
        after = db_rows(results_db, "SELECT rolsuper, rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        assert after == before  # untouched: attributes and password
    finally:
        if existing == "made-by-hand":
            results_db.transaction(lambda cur: cur.execute(f'DROP ROLE "{role}"'))


def test_a_login_the_old_review_db_login_made_is_adopted_by_the_migration(cli_env, results_db, capsys):
    """Roles made before review-db-login marked its roles (LOGIN, in ra_app and nothing else)
    are marked by migration 015, so re-running the command (or the demo) keeps working."""
    role = f"old_console_{os.getpid()}_{int(time.time())}"
    results_db.transaction(lambda cur: cur.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'x' IN ROLE ra_app"))
    try:
        assert main(["review-db-login", role]) == 1  # unmarked: refused
        capsys.readouterr()
        migration = next(m for m in bundled_migrations() if m.version == "015")
        results_db.transaction(lambda cur: cur.execute(migration.sql))  # what `migrate` ran on upgrade
        assert main(["review-db-login", role]) == 0
    finally:
        results_db.transaction(lambda cur: cur.execute(f'DROP ROLE "{role}"'))


def test_review_db_login_resets_its_own_role(cli_env, results_db, capsys):
    role = f"console_again_{os.getpid()}_{int(time.time())}"
    try:
        assert main(["review-db-login", role]) == 0
        first = capsys.readouterr().out.strip().partition("=")[2]
        assert main(["review-db-login", role]) == 0  # made here: a new password, nothing else
        second = capsys.readouterr().out.strip().partition("=")[2]
        assert first != second
        store = ReviewStore(second, double_coding_percent=0, claim_minutes=1)
        store.check_role()
        store.close()
    finally:
        with results_db.open_connection() as conn, conn, conn.cursor() as cur:
            cur.execute(f'DROP OWNED BY "{role}"')
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')


def _run_review(env: dict, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "operations.cli", "review", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_review_command_serves_on_loopback(cli_env, console_dsn):
    port = free_tcp_ports(1)[0]
    env = {**os.environ, "REVIEW_DATABASE_DSN": console_dsn, "REVIEW_SECURE_COOKIES": "false"}
    process = _run_review(env, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, body = http(f"http://127.0.0.1:{port}/sign-in")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.2)
        assert status == 200 and b"Sign in" in body
        assert http(f"http://127.0.0.1:{port}/queue")[0] == 303
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_review_command_refuses_to_run_as_an_owner_role(cli_env, results_db, monkeypatch, capsys):
    monkeypatch.setenv("REVIEW_DATABASE_DSN", results_db.dsn)
    assert main(["review", "--port", str(free_tcp_ports(1)[0])]) == 2
    assert "member of ra_app" in capsys.readouterr().err
