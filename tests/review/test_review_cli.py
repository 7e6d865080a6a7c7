"""`audio-pipeline review-user | review-db-login | review` against the real test services."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
from review_support import http
from pipeline_support import rows

from operations.cli import main
from embedded_services.ports import free_tcp_ports
from review.passwords import verify_password
from review.store import ReviewStore


@pytest.fixture
def cli_env(monkeypatch, results_db, object_store) -> dict[str, str]:
    env = {"AUDIO_PIPELINE_ENV": "local", "POSTGRES_DSN": results_db.dsn, "S3_ENDPOINT": object_store.endpoint_url,
           "S3_BUCKET": object_store.bucket, "S3_ACCESS_KEY": object_store.access_key,
           "S3_SECRET_KEY": object_store.secret_key}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REVIEW_DATABASE_DSN", raising=False)
    return env


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
    store.close()
    # Stored as argon2id, never as the password.
    (row,) = rows(results_db, "SELECT password_hash FROM ra_users WHERE username = 'dora'")
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


def _run_review(env: dict, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "operations.cli", "review", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
