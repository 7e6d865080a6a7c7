"""The results database: connections that survive a blip, units of work, named-query reads.

Every unit of work is one transaction run by `transaction()`. When the server is unreachable
or the connection drops (a restart, a failover, a network cut), the whole unit is retried
with backoff for up to `retry_window_s`, so an outage shorter than that costs time, not a
failed step. That is safe because every unit only touches the database and every writer
upserts on natural keys: running one twice changes nothing the first run did not.

A step writes for its archive through a `FencedArchive` (resources/archive_run.py), whose
transactions first check that the run's version and claim epoch are still current: a run of
an older version, or one another run has taken over from, never overwrites results.

Sessions carry a statement and a lock timeout, so a stuck query or a lock held by a dead
client fails (and is retried) instead of hanging a step, and TCP keepalives, so a server that
vanished is noticed in about a minute instead of the kernel's two hours.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import dagster as dg
import psycopg2
import psycopg2.extras
from psycopg2.extensions import make_dsn, parse_dsn
from pydantic import Field

from archive_identity import ArchiveVersion
from sql.migrate import apply_migrations, pending_migrations
from sql.named_queries import NamedQuery

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs worth another try: connection exceptions (class 08), the server shutting down or
# starting up, and conflicts that a retry resolves (serialization, deadlock, lock timeout).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})


def is_transient_db_error(error: BaseException) -> bool:
    """True for errors another attempt may not meet: no connection, a dropped one, a server
    restarting, a serialization conflict. False for SQL errors and statement timeouts."""
    if not isinstance(error, psycopg2.Error):
        return False
    code = error.pgcode
    if code is None:  # raised by libpq itself: refused, reset, closed, timed out connecting
        return isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError))
    return code.startswith("08") or code in _TRANSIENT_SQLSTATES


class Database(dg.ConfigurableResource):
    """Connections and units of work on the results database; `ResultsDatabase` (the package's
    resource) adds one data-access object per concern. `dsn` wins over the connection fields."""

    dsn: str | None = Field(default=None, description="libpq DSN or postgresql:// URL")
    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str = "audio_pipeline"
    user: str = "pipeline"
    password: str | None = None
    connect_timeout_s: int = Field(default=10, description="Per connection attempt")
    statement_timeout_s: float = Field(default=300, description="A statement running longer is cancelled")
    lock_timeout_s: float = Field(default=30, description="A lock wait longer than this fails and is retried")
    retry_window_s: float = Field(
        default=120, description="How long a unit of work keeps retrying while the server is unreachable"
    )

    def connection_string(self) -> str:
        """The DSN with this resource's timeouts and keepalives merged in (a given DSN's own
        settings are kept, except that our session options are appended to its options)."""
        base = self.dsn or make_dsn(
            host=self.host, port=self.port, dbname=self.dbname, user=self.user, password=self.password
        )
        given = parse_dsn(base)
        options = " ".join(
            part
            for part in (
                given.get("options", ""),
                f"-c statement_timeout={int(self.statement_timeout_s * 1000)}",
                f"-c lock_timeout={int(self.lock_timeout_s * 1000)}",
            )
            if part
        )
        return make_dsn(
            base,
            connect_timeout=given.get("connect_timeout", self.connect_timeout_s),
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
            application_name=given.get("application_name", "audio-pipeline"),
            options=options,
        )

    # --- units of work -----------------------------------------------------------------------

    def transaction(
        self,
        work: Callable[[psycopg2.extensions.cursor], T],
        *,
        what: str = "database work",
    ) -> T:
        """Run `work(cursor)` in one transaction and commit, retrying the whole of it on
        transient errors for up to retry_window_s. `work` must only touch the database.
        The cursor returns rows as dicts."""
        deadline = time.monotonic() + self.retry_window_s
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.open_connection() as conn:
                    with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                        return work(cur)
            except psycopg2.Error as error:
                remaining = deadline - time.monotonic()
                if not is_transient_db_error(error) or remaining <= 0:
                    raise
                delay = min(remaining, random.uniform(0, min(8.0, 0.25 * 2**attempt)))
                log.warning("%s: %s (attempt %d); retrying in %.1f s", what, str(error).strip(), attempt, delay)
                time.sleep(delay)

    def rows(self, query: NamedQuery, params: dict | None = None, *, what: str = "read") -> list[dict[str, Any]]:
        """Rows of one named query from sql/queries/ (for the data-access modules); SQL text
        built anywhere else is refused."""
        if not isinstance(query, NamedQuery):
            raise TypeError("rows() runs named queries from sql/queries/, not SQL text")

        def read(cur) -> list[dict[str, Any]]:
            cur.execute(query, params)
            return [dict(row) for row in cur.fetchall()]

        return self.transaction(read, what=what)

    @contextlib.contextmanager
    def open_connection(self) -> Iterator[psycopg2.extensions.connection]:
        """A raw connection, closed on exit (for sessions that must outlive one transaction,
        such as the migrate runner's)."""
        conn = psycopg2.connect(self.connection_string())
        try:
            yield conn
        finally:
            conn.close()

    # --- schema ------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        return apply_migrations(self.connection_string())

    def pending_migrations(self) -> list[str]:
        return pending_migrations(self.connection_string())


class Reader(Protocol):
    """Anything that runs a named query's read: a Database, or a step's HeldArchive."""

    def rows(self, query: NamedQuery, params: dict | None = None) -> list[dict[str, Any]]: ...


class FencedArchive(Reader, Protocol):
    """What a step's data module writes through (resources/archive_run.HeldArchive): the run's
    archive version with its claim's epoch, the run, and transactions fenced by both."""

    archive: ArchiveVersion
    run_id: str

    def transaction(self, work: Callable[[Any], T], what: str) -> T: ...
