"""The console's part of `audio-pipeline demo`: its database login, its settings file and a
demo RA account, kept under the demo's state folder so a second run reuses them."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from psycopg2.extensions import make_dsn, parse_dsn

from review.accounts import AccountError, add_user, ensure_console_login, set_password
from review.store import QueueFilter, ReviewStore

CONSOLE_ROLE = "review_console"
DEMO_RA = "demo-ra"
ENV_FILE_NAME = "review-console.env"


@dataclass(frozen=True)
class DemoConsole:
    env_file: Path
    username: str
    password: str
    waiting_items: int


def prepare_demo_console(results_db, pg, s3, bucket: str, state: Path) -> DemoConsole:
    role_password = _kept_secret(state / "review-console-db-password")
    ra_password = _kept_secret(state / "review-demo-ra-password")
    ensure_console_login(results_db, CONSOLE_ROLE, role_password)
    database = parse_dsn(results_db.dsn)["dbname"]
    dsn = make_dsn(host=pg.host, port=pg.port, dbname=database, user=CONSOLE_ROLE, password=role_password)
    env_file = state / ENV_FILE_NAME
    _write_private(
        env_file,
        "".join(
            f"{k}={v}\n"
            for k, v in {
                "REVIEW_DATABASE_DSN": dsn,
                "S3_ENDPOINT": s3.endpoint_url,
                "S3_BUCKET": bucket,
                "REVIEW_S3_ACCESS_KEY": s3.access_key,
                "REVIEW_S3_SECRET_KEY": s3.secret_key,
                # The demo serves plain http on loopback; production keeps Secure cookies behind TLS.
                "REVIEW_SECURE_COOKIES": "false",
            }.items()
        ),
    )
    try:
        add_user(results_db, DEMO_RA, ra_password)
    except AccountError:
        set_password(results_db, DEMO_RA, ra_password)
    store = ReviewStore(dsn, double_coding_percent=10, claim_minutes=15, max_connections=1)
    try:
        store.check_role()
        account = store.account(DEMO_RA)
        assert account is not None  # added or updated just above
        waiting = len(store.queue(account["id"], QueueFilter(), limit=10_000))
    finally:
        store.close()
    return DemoConsole(env_file, DEMO_RA, ra_password, waiting)


def _kept_secret(path: Path) -> str:
    """A random secret stored in `path` (0600) the first time, read back afterwards."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(18)
    _write_private(path, value + "\n")
    return value


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
