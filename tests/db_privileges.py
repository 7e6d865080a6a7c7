"""Checks that a database login is refused what its role must not do."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg2
import pytest


def assert_each_refused(dsn: str, statements: Iterable[str]) -> None:
    """Every statement, on its own connection (a refusal aborts the transaction), fails with
    InsufficientPrivilege."""
    for statement in statements:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
