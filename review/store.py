"""The console's data access, as role ra_app: it reads views and inserts rows, nothing else.

Every method is one transaction on a pooled connection. The SQL lives in
sql/queries/review_accounts.sql, review_items.sql, review_stats.sql and review_calibration.sql.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extras

from sql.named_queries import queries

ACCOUNTS = queries("review_accounts")
ITEMS = queries("review_items")
STATS = queries("review_stats")
CALIBRATION = queries("review_calibration")


class UnsafeDatabaseRole(RuntimeError):
    """The console was pointed at a role with more privileges than ra_app's."""


class DatabaseBusy(RuntimeError):
    """Every connection stayed in use for the whole wait: the request is answered 503."""


class DatabaseUnavailable(RuntimeError):
    """The database refused or dropped the connection: the request is answered 503."""


@dataclass(frozen=True)
class QueueFilter:
    policy: str | None = None
    model: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    date_from: str | None = None  # YYYY-MM-DD, flagged on or after
    date_to: str | None = None  # YYYY-MM-DD, flagged on or before

    def params(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "model": self.model,
            "score_min": self.score_min,
            "score_max": self.score_max,
            "date_from": self.date_from,
            "date_to": self.date_to,
        }


class ConnectionPool:
    """At most `size` connections. A caller waits up to `wait_s` for a free one and then gets
    DatabaseBusy; psycopg2's ThreadedConnectionPool raises at once instead, which turned a burst
    of requests into 500s. Connections are opened on demand and kept for reuse."""

    def __init__(self, dsn: str, size: int, wait_s: float):
        self.size, self.wait_s = size, wait_s
        self._dsn = dsn
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg2.extensions.connection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        if not self._slots.acquire(timeout=self.wait_s):
            raise DatabaseBusy(f"all {self.size} database connections stayed busy for {self.wait_s:g} s")
        try:
            conn = self._take()
            broken = False
            try:
                yield conn
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                broken = True  # a dropped (or timed-out) connection is not handed out again
                raise
            finally:
                self._give_back(conn, broken or bool(conn.closed))
        finally:
            self._slots.release()

    def _take(self) -> psycopg2.extensions.connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            # Short statement timeout: a page should never wait on a stuck query for long.
            return psycopg2.connect(
                self._dsn,
                application_name="audio-pipeline-review",
                connect_timeout=5,
                options="-c statement_timeout=15000 -c lock_timeout=5000",
            )
        except psycopg2.OperationalError as error:
            raise DatabaseUnavailable(str(error).strip()) from None

    def _give_back(self, conn, close: bool) -> None:
        if close:
            conn.close()
            return
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class ReviewStore:
    def __init__(
        self,
        dsn: str,
        *,
        double_coding_percent: int,
        claim_minutes: float,
        max_connections: int = 8,
        wait_s: float = 3.0,
    ):
        self.double_coding_percent = double_coding_percent
        self.claim_s = claim_minutes * 60
        self.pool = ConnectionPool(dsn, max_connections, wait_s)

    def close(self) -> None:
        self.pool.close()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        with self.pool.connection() as conn, conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            yield cur

    def _all(self, sql: str, params: dict | None = None) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()]

    def _one(self, sql: str, params: dict | None = None) -> dict[str, Any] | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _run(self, sql: str, params: dict) -> int:
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def check_role(self) -> None:
        """Refuse to serve as anything but a login whose only privileges are ra_app's: the
        console's privileges are its second line of defence after its own checks. Every
        privilege is checked (tables, views, columns, sequences, schemas, the database, role
        memberships and attributes), not one sample table."""
        excess = self._all(ACCOUNTS.role_excess_privileges)
        if excess:
            found = ", ".join(f"{row['privilege']} on {row['object']}" for row in excess[:20])
            raise UnsafeDatabaseRole(
                "REVIEW_DATABASE_DSN must name a login role that is a member of ra_app and holds nothing "
                f"more; this one also has: {found} (see deploy/README.md)"
            )

    # --- accounts and sessions ------------------------------------------------------------------

    def account(self, username: str) -> dict[str, Any] | None:
        return self._one(ACCOUNTS.account_by_name, {"username": username})

    def start_session(
        self,
        token_sha256: str,
        account: dict[str, Any],
        csrf_token: str,
        ttl_s: float,
        client_address: str,
        user_agent: str,
    ) -> None:
        self._run(
            ACCOUNTS.start_session,
            {
                "token_sha256": token_sha256,
                "ra_user_id": account["id"],
                "session_epoch": account["session_epoch"],
                "csrf_token": csrf_token,
                "ttl_s": ttl_s,
                "client_address": client_address,
                "user_agent": user_agent,
            },
        )

    def live_session(self, token_sha256: str) -> dict[str, Any] | None:
        return self._one(ACCOUNTS.live_session, {"token_sha256": token_sha256})

    def end_session(self, token_sha256: str) -> None:
        self._run(ACCOUNTS.end_session, {"token_sha256": token_sha256})

    def sessions_of(self, ra: int) -> list[dict[str, Any]]:
        return self._all(ACCOUNTS.sessions_of_ra, {"ra": ra})

    def end_other_sessions(self, ra: int, keep_token_sha256: str) -> int:
        return self._run(ACCOUNTS.end_other_sessions, {"ra": ra, "keep": keep_token_sha256})

    # --- queue, claims, decisions -------------------------------------------------------------

    def _queue_params(self, ra: int, filters: QueueFilter, limit: int, item_id: int | None = None) -> dict[str, Any]:
        return {
            "ra": ra,
            "double_coding_percent": self.double_coding_percent,
            "limit": limit,
            "item_id": item_id,
            **filters.params(),
        }

    def queue(self, ra: int, filters: QueueFilter, limit: int = 100) -> list[dict[str, Any]]:
        return self._all(ITEMS.queue, self._queue_params(ra, filters, limit))

    def queue_counts(self) -> list[dict[str, Any]]:
        return self._all(STATS.queue_counts, {"double_coding_percent": self.double_coding_percent})

    def filter_choices(self) -> list[dict[str, Any]]:
        return self._all(ITEMS.filter_choices)

    def claimable(self, ra: int, item_id: int) -> bool:
        """Whether the queue offers `item_id` to this RA now (without claiming it)."""
        return self._one(ITEMS.queue, self._queue_params(ra, QueueFilter(), limit=1, item_id=item_id)) is not None

    def claim(self, ra: int, item_id: int) -> bool:
        """Claim `item_id` for this RA if the queue offers it to them (or they hold it already);
        False when other RAs hold or decided it, or this RA decided it."""
        with self._cursor() as cur:
            cur.execute(ITEMS.take_claim_lock)
            cur.execute(ITEMS.queue, self._queue_params(ra, QueueFilter(), limit=1, item_id=item_id))
            if cur.fetchone() is None:
                return False
            cur.execute(ITEMS.insert_claim, {"item_id": item_id, "ra": ra, "ttl_s": self.claim_s})
            return True

    def holds_claim(self, ra: int, item_id: int) -> bool:
        return self._one(ITEMS.my_claim, {"ra": ra, "item_id": item_id}) is not None

    def item(self, item_id: int) -> dict[str, Any] | None:
        return self._one(ITEMS.item, {"item_id": item_id})

    def my_decision(self, ra: int, item_id: int) -> dict[str, Any] | None:
        return self._one(ITEMS.my_decision, {"ra": ra, "item_id": item_id})

    def record_decision(self, ra: int, item_id: int, policy_version: str, decision: str, reason: str) -> bool:
        """Append the decision; False when the item's flag changed since the RA opened it."""
        return (
            self._run(
                ITEMS.record_decision,
                {
                    "ra": ra,
                    "item_id": item_id,
                    "policy_version": policy_version,
                    "decision": decision,
                    "reason": reason,
                },
            )
            == 1
        )

    def audio_key(self, audio_file_id: int) -> str | None:
        row = self._one(ITEMS.audio_key, {"audio_file_id": audio_file_id})
        return row["opus_key"] if row else None

    def search(self, words: str, limit: int = 50) -> list[dict[str, Any]]:
        return self._all(ITEMS.search, {"words": words, "limit": limit})

    # --- stats ----------------------------------------------------------------------------------

    def lead_stats(self) -> dict[str, list[dict[str, Any]]]:
        """Everyone's figures, for a lead: precision per day, recall, agreement, decisions per RA."""
        return {
            "precision": self._all(STATS.precision),
            "recall": self._all(STATS.recall),
            "agreement": self._all(STATS.agreement),
            "decisions_per_ra": self._all(STATS.decisions_per_ra),
        }

    def ra_stats(self, ra: int) -> dict[str, list[dict[str, Any]]]:
        """What an RA coding blind may see: their own decisions, and team precision over items
        they can no longer code (complete, and not theirs)."""
        params = {"ra": ra, "double_coding_percent": self.double_coding_percent}
        return {
            "own_decisions": self._all(STATS.own_decisions, params),
            "team_precision": self._all(STATS.team_precision_for_ra, params),
        }

    def calibration(self) -> list[dict[str, Any]]:
        return self._all(CALIBRATION.calibration)

    def recommended_thresholds(self, target_precision: float) -> list[dict[str, Any]]:
        return self._all(CALIBRATION.recommended_thresholds, {"target": target_precision})
