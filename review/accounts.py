"""The operator's side of the console: RA accounts and the console's database login.

These run with the pipeline's own database role (the owner of ra_users), from
`audio-pipeline review-user ...` and the demo; the console itself cannot create accounts.
"""

from __future__ import annotations

import psycopg2

from review.passwords import hash_password
from sql.named_queries import queries

Q = queries("review_accounts")


class AccountError(RuntimeError):
    pass


def add_user(results_db, username: str, password: str) -> None:
    password_hash = hash_password(password)

    def insert(cur) -> None:
        try:
            cur.execute(Q.add_user, {"username": username, "password_hash": password_hash})
        except psycopg2.errors.UniqueViolation:
            raise AccountError(f"{username!r} exists; use `review-user set-password`") from None
        except psycopg2.errors.CheckViolation:
            raise AccountError("user names are 2-64 characters: a-z, 0-9, '_', '.', '-'") from None

    results_db.transaction(insert, what="add an RA account")


def set_password(results_db, username: str, password: str) -> None:
    password_hash = hash_password(password)

    def update(cur) -> None:
        cur.execute(Q.set_password, {"username": username, "password_hash": password_hash})
        if cur.rowcount != 1:
            raise AccountError(f"no RA account named {username!r}")

    results_db.transaction(update, what="set an RA password")


def disable_user(results_db, username: str) -> None:
    def update(cur) -> None:
        cur.execute(Q.disable_user, {"username": username})
        if cur.rowcount != 1:
            raise AccountError(f"no RA account named {username!r}")

    results_db.transaction(update, what="disable an RA account")


def ensure_console_login(results_db, role: str, password: str) -> None:
    """Create (or reset the password of) the login role the console connects as."""

    def create(cur) -> None:
        cur.execute(Q.console_login_statement, {"role": role, "password": password})
        cur.execute(cur.fetchone()["statement"])
        cur.execute(Q.grant_ra_app, {"role": role})
        cur.execute(cur.fetchone()["statement"])

    results_db.transaction(create, what="create the review console's login role")
