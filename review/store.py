"""The console's data access, as role ra_app: it reads views and inserts rows, nothing else.

Every method is one transaction on a pooled connection. The SQL lives in
sql/queries/review_accounts.sql, review_items.sql and review_stats.sql.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extras
import psycopg2.pool

from sql.named_queries import queries

ACCOUNTS = queries("review_accounts")
ITEMS = queries("review_items")
STATS = queries("review_stats")


class UnsafeDatabaseRole(RuntimeError):
    """The console was pointed at a role with more privileges than ra_app's."""


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
            "policy": self.policy, "model": self.model, "score_min": self.score_min,
            "score_max": self.score_max, "date_from": self.date_from, "date_to": self.date_to,
        }


class ReviewStore:
    def __init__(self, dsn: str, *, double_coding_percent: int, claim_minutes: float, max_connections: int = 8):
        self.double_coding_percent = double_coding_percent
        self.claim_s = claim_minutes * 60
        # Short statement timeout: a page should never wait on a stuck query for long.
        self._pool = psycopg2.pool.ThreadedConnectionPool(
            1, max_connections, dsn, application_name="audio-pipeline-review",
            options="-c statement_timeout=15000 -c lock_timeout=5000",
        )

    def close(self) -> None:
        self._pool.closeall()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        conn = self._pool.getconn()
        broken = False
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True  # a dropped connection is not handed out again
            raise
        finally:
            self._pool.putconn(conn, close=broken or bool(conn.closed))

    def _all(self, sql: str, params: dict | None = None) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()]

    def _one(self, sql: str, params: dict | None = None) -> dict[str, Any] | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def check_role(self) -> None:
        """Refuse to serve as a superuser or a role that can read base tables: the console's
        privileges are its second line of defence after its own checks."""
        row = self._one(ACCOUNTS.role_check)
        if row is None or row["superuser"] or row["reads_base_tables"] or not row["in_ra_app"]:
            raise UnsafeDatabaseRole(
                "REVIEW_DATABASE_DSN must name a login role that is a member of ra_app and nothing "
                f"more (found: {row}); see deploy/README.md"
            )

    # --- accounts and sessions ------------------------------------------------------------------

    def account(self, username: str) -> dict[str, Any] | None:
        return self._one(ACCOUNTS.account_by_name, {"username": username})

    def start_session(self, token_sha256: str, ra_user_id: int, csrf_token: str, ttl_s: float) -> None:
        with self._cursor() as cur:
            cur.execute(ACCOUNTS.start_session, {
                "token_sha256": token_sha256, "ra_user_id": ra_user_id, "csrf_token": csrf_token, "ttl_s": ttl_s,
            })

    def live_session(self, token_sha256: str) -> dict[str, Any] | None:
        return self._one(ACCOUNTS.live_session, {"token_sha256": token_sha256})

    def end_session(self, token_sha256: str) -> None:
        with self._cursor() as cur:
            cur.execute(ACCOUNTS.end_session, {"token_sha256": token_sha256})

    # --- queue, claims, decisions -------------------------------------------------------------

    def _queue_params(self, ra: int, filters: QueueFilter, limit: int, item_id: int | None = None) -> dict[str, Any]:
        return {"ra": ra, "double_coding_percent": self.double_coding_percent, "limit": limit, "item_id": item_id,
                **filters.params()}

    def queue(self, ra: int, filters: QueueFilter, limit: int = 100) -> list[dict[str, Any]]:
        return self._all(ITEMS.queue, self._queue_params(ra, filters, limit))

    def queue_counts(self) -> list[dict[str, Any]]:
        return self._all(STATS.queue_counts, {"double_coding_percent": self.double_coding_percent})

    def filter_choices(self) -> list[dict[str, Any]]:
        return self._all(ITEMS.filter_choices)

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

    def item(self, item_id: int) -> dict[str, Any] | None:
        return self._one(ITEMS.item, {"item_id": item_id})

    def my_decision(self, ra: int, item_id: int) -> dict[str, Any] | None:
        return self._one(ITEMS.my_decision, {"ra": ra, "item_id": item_id})

    def record_decision(self, ra: int, item_id: int, policy_version: str, decision: str, reason: str) -> bool:
        """Append the decision; False when the item's flag changed since the RA opened it."""
        with self._cursor() as cur:
            cur.execute(ITEMS.record_decision, {
                "ra": ra, "item_id": item_id, "policy_version": policy_version,
                "decision": decision, "reason": reason,
            })
            return cur.rowcount == 1

    def audio_key(self, audio_file_id: int) -> str | None:
        row = self._one(ITEMS.audio_key, {"audio_file_id": audio_file_id})
        return row["opus_key"] if row else None

    def search(self, words: str, limit: int = 50) -> list[dict[str, Any]]:
        return self._all(ITEMS.search, {"words": words, "limit": limit})

    # --- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "precision": self._all(STATS.precision),
            "agreement": self._all(STATS.agreement),
            "decisions_per_ra": self._all(STATS.decisions_per_ra),
        }
