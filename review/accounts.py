"""The operator's side of the console: RA accounts and the console's database login.

These run with the pipeline's own database role (the owner of ra_users), from
`audio-pipeline review-user ...`, `review-db-login` and the demo; the console itself cannot
create or change accounts.
"""

from __future__ import annotations

import psycopg2

from review.passwords import hash_password
from sql.named_queries import queries

Q = queries("review_accounts")
ROLES = ("ra", "lead")
# review-db-login comments the roles it creates with this, and touches no other existing role.
CONSOLE_LOGIN_MARKER = "audio-pipeline review console login"


class AccountError(RuntimeError):
    pass


def add_user(results_db, username: str, password: str, role: str = "ra") -> None:
    _check_role(role)
    password_hash = hash_password(password)

    def insert(cur) -> None:
        try:
            cur.execute(Q.add_user, {"username": username, "password_hash": password_hash, "role": role})
        except psycopg2.errors.UniqueViolation:
            raise AccountError(f"{username!r} exists; use `review-user set-password`") from None
        except psycopg2.errors.CheckViolation:
            raise AccountError("user names are 2-64 characters: a-z, 0-9, '_', '.', '-'") from None

    results_db.transaction(insert, what="add an RA account")


def set_password(results_db, username: str, password: str) -> bool:
    """New password; every session of the account ends. Returns whether the account is
    (still) disabled: a new password never enables an account (`enable_user` does)."""
    password_hash = hash_password(password)

    def update(cur) -> bool:
        cur.execute(Q.set_password, {"username": username, "password_hash": password_hash})
        row = cur.fetchone()
        if row is None:
            raise AccountError(f"no RA account named {username!r}")
        return bool(row["disabled"])

    return results_db.transaction(update, what="set an RA password")


def disable_user(results_db, username: str) -> None:
    """The account cannot sign in, and its sessions end at once."""
    _update_one(results_db, Q.disable_user, {"username": username}, "disable an RA account")


def enable_user(results_db, username: str) -> None:
    """The account can sign in again with its password; sessions from before stay ended."""
    _update_one(results_db, Q.enable_user, {"username": username}, "enable an RA account")


def set_role(results_db, username: str, role: str) -> None:
    _check_role(role)
    _update_one(results_db, Q.set_role, {"username": username, "role": role}, "set an RA's role")


def _update_one(results_db, sql: str, params: dict, what: str) -> None:
    def update(cur) -> None:
        cur.execute(sql, params)
        if cur.rowcount != 1:
            raise AccountError(f"no RA account named {params['username']!r}")

    results_db.transaction(update, what=what)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"role {role!r}: expected one of {', '.join(ROLES)}")


def ensure_console_login(results_db, role: str, password: str) -> None:
    """Create the login role the console connects as (a member of ra_app, marked as made
    here), or reset the password of one this made before. Any other existing role is refused:
    this must never strip or re-password a role someone else made (the pipeline's own, say)."""

    def create(cur) -> None:
        cur.execute(Q.console_login_role, {"role": role, "marker": CONSOLE_LOGIN_MARKER})
        existing = cur.fetchone()
        if existing is not None and not existing["created_here"]:
            raise AccountError(
                f"role {role!r} exists and was not created by `review-db-login`; choose another name "
                "(the console's login must be a role of its own)"
            )
        cur.execute(
            Q.console_login_statements,
            {"role": role, "password": password, "exists": existing is not None, "marker": CONSOLE_LOGIN_MARKER},
        )
        for statement in [row["statement"] for row in cur.fetchall()]:
            cur.execute(statement)
        cur.execute(Q.grant_ra_app, {"role": role})
        cur.execute(cur.fetchone()["statement"])

    results_db.transaction(create, what="create the review console's login role")
