"""Apply the numbered migrations in sql/migrations once each, then (re)create the views.

Applied versions are recorded in schema_migrations with a checksum, so a migration that was
edited after it ran is reported instead of silently diverging. An advisory lock makes two
processes that migrate at the same time (a webserver and a daemon starting together) safe.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg2

# Any constant works; it only has to be the same for every process that migrates.
_ADVISORY_LOCK_ID = 7_310_442_001


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def bundled_migrations() -> list[Migration]:
    folder = resources.files("sql") / "migrations"
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return found


def bundled_views() -> list[tuple[str, str]]:
    folder = resources.files("sql") / "views"
    return [
        (entry.name, entry.read_text())
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".sql")
    ]


def _ensure_history_table(cur) -> None:
    cur.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    TEXT PRIMARY KEY,
            name       TEXT NOT NULL,
            checksum   TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )


def _applied(cur) -> dict[str, str]:
    cur.execute("SELECT version, checksum FROM schema_migrations")
    return dict(cur.fetchall())


def pending_migrations(dsn: str) -> list[str]:
    """Versions not yet applied (for `doctor`); raises MigrationError on an edited migration."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        _ensure_history_table(cur)
        applied = _applied(cur)
    _check_unchanged(applied)
    return [m.version for m in bundled_migrations() if m.version not in applied]


def _check_unchanged(applied: dict[str, str]) -> None:
    for migration in bundled_migrations():
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version}_{migration.name} changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )


def apply_migrations(dsn: str) -> list[str]:
    """Apply what is pending and refresh the views; returns the versions applied now."""
    conn = psycopg2.connect(dsn)
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_ID,))
                _ensure_history_table(cur)
                applied = _applied(cur)
                _check_unchanged(applied)
                newly_applied = []
                for migration in bundled_migrations():
                    if migration.version in applied:
                        continue
                    cur.execute(migration.sql)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                    newly_applied.append(migration.version)
                for _name, view_sql in bundled_views():
                    cur.execute(view_sql)
        return newly_applied
    finally:
        conn.close()
