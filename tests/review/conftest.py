"""Fixtures for the review console: its database login, seeded flagged items with real
Opus audio in SeaweedFS, the app under uvicorn, and Debian's Chromium through Playwright."""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg2.extensions import make_dsn, parse_dsn
from review_support import RA_PASSWORD, ConsoleServer, make_opus

from review.accounts import add_user, ensure_console_login
from review.app import build_app
from review.settings import ReviewSettings
from review.sign_in_limiter import SignInLimiter

CHROMIUM = os.environ.get("REVIEW_TEST_CHROMIUM", "/usr/bin/chromium")
TEST_OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "review"


@pytest.fixture(scope="session")
def opus_bytes(tmp_path_factory) -> bytes:
    return make_opus(tmp_path_factory.mktemp("audio") / "clip.opus")


@pytest.fixture
def console_dsn(results_db) -> Iterator[str]:
    """A login role that is a member of ra_app and nothing else, as deploy/README.md sets up."""
    role = f"review_console_{uuid.uuid4().hex[:10]}"
    password = secrets.token_urlsafe(16)
    ensure_console_login(results_db, role, password)
    params = parse_dsn(results_db.dsn)
    params.update(user=role, password=password)
    yield make_dsn(**params)
    with results_db.open_connection() as conn, conn, conn.cursor() as cur:
        cur.execute(f'DROP OWNED BY "{role}"')
        cur.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def ra_login_for_review(results_db) -> Iterator[str]:
    """A login role in ra_reader, as an RA reading SQL directly would have."""
    role = f"ra_reader_{uuid.uuid4().hex[:10]}"
    with results_db.open_connection() as conn, conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'ra-pass' IN ROLE ra_reader")
    params = parse_dsn(results_db.dsn)
    params.update(user=role, password="ra-pass")
    yield make_dsn(**params)
    with results_db.open_connection() as conn, conn, conn.cursor() as cur:
        cur.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def ras(results_db) -> list[str]:
    """Three RA accounts, all with RA_PASSWORD."""
    names = ["alice", "bob", "carol"]
    for name in names:
        add_user(results_db, name, RA_PASSWORD)
    return names


@pytest.fixture
def start_console(console_dsn, object_store):
    """Start the console with settings overrides; stopped at the end of the test."""
    servers: list[ConsoleServer] = []

    def start(**overrides) -> ConsoleServer:
        settings = ReviewSettings(
            database_dsn=console_dsn,
            s3_endpoint=object_store.endpoint_url,
            s3_bucket=object_store.bucket,
            s3_access_key=object_store.access_key,
            s3_secret_key=object_store.secret_key,
            **({"secure_cookies": False} | overrides),
        )
        limiter = SignInLimiter(delay_s=0.2)
        server = ConsoleServer(build_app(settings, limiter=limiter)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def cli_env(monkeypatch, results_db, object_store) -> dict[str, str]:
    env = {
        "AUDIO_PIPELINE_ENV": "local",
        "POSTGRES_DSN": results_db.dsn,
        "S3_ENDPOINT": object_store.endpoint_url,
        "S3_BUCKET": object_store.bucket,
        "S3_ACCESS_KEY": object_store.access_key,
        "S3_SECRET_KEY": object_store.secret_key,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REVIEW_DATABASE_DSN", raising=False)
    return env


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: bin/setup installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        yield browser
        browser.close()


@pytest.fixture
def output_dir(request) -> Path:
    """Screenshots land in test-output/review/<test name>/ (gitignored)."""
    folder = TEST_OUTPUT / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
