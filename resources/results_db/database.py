"""The results database: connections that survive a blip, transactions fenced by archive version.

Every unit of work is one transaction run by `transaction()`. When the server is unreachable
or the connection drops (a restart, a failover, a network cut), the whole unit is retried
with backoff for up to `retry_window_s`, so an outage shorter than that costs time, not a
failed step. That is safe because every unit only touches the database and every writer
upserts on natural keys: running one twice changes nothing the first run did not.

A write for an archive passes `fence=`: the transaction first takes a share lock on the
archive's row in `archives` and refuses unless the run's version is the one results belong to
(StaleArchiveVersion) and the run still holds the archive's claim, by epoch (ClaimLost). A run
for an older version, or one another run has taken over from, can therefore never overwrite
results, even if two runs of one archive slip past the run queue.

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
from typing import Any, TypeVar

import dagster as dg
import psycopg2
import psycopg2.extras
from psycopg2.extensions import make_dsn, parse_dsn
from pydantic import Field

from archive_identity import ArchiveVersion
from sql.migrate import apply_migrations, pending_migrations
from sql.named_queries import NamedQuery, queries

log = logging.getLogger(__name__)
T = TypeVar("T")

Q = queries("archives")

# SQLSTATEs worth another try: connection exceptions (class 08), the server shutting down or
# starting up, and conflicts that a retry resolves (serialization, deadlock, lock timeout).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})


class StaleArchiveVersion(dg.Failure):
    """The run's archive version is no longer the one results belong to: a newer version has
    been claimed. Nothing was written; retrying cannot help."""

    def __init__(self, archive: ArchiveVersion, current_etag: str | None):
        self.archive, self.current_etag = archive, current_etag
        super().__init__(
            description=(
                f"{archive.key}: this run read version {archive.etag}, but the results now belong to "
                f"version {current_etag or '(none registered)'}; nothing was written "
                "(the newer version's own run writes its results)"
            ),
            allow_retries=False,
        )


class ClaimLost(dg.Failure):
    """Another run took the archive over (this run's claim had ended or gone silent): this
    run's writes are refused. Nothing was written; retrying cannot help."""

    def __init__(self, archive: ArchiveVersion, current_epoch: int | None, holder: str | None = None):
        self.archive, self.current_epoch = archive, current_epoch
        by = f" by run {holder}" if holder else ""
        super().__init__(
            description=(
                f"{archive.key}: this run's claim (epoch {archive.epoch}) was taken over{by} "
                f"(epoch {current_epoch}); nothing was written"
            ),
            allow_retries=False,
        )


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
        fence: ArchiveVersion | None = None,
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
                        if fence is not None:
                            _check_fence(cur, fence)
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


def _check_fence(cur, archive: ArchiveVersion) -> None:
    cur.execute(Q.lock_current_version, {"archive_key": archive.key})
    row = cur.fetchone()
    current = row["current_etag"] if row else None
    if current != archive.etag:
        raise StaleArchiveVersion(archive, current)
    if archive.epoch is not None and row["claim_epoch"] != archive.epoch:
        raise ClaimLost(archive, row["claim_epoch"])
