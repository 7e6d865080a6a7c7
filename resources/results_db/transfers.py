"""remote_transfers: which remote file versions transfer_archive has delivered."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from resources.results_db.database import Database
from sql.named_queries import queries

Q = queries("transfers")


@dataclass(frozen=True)
class TransferRecord:
    remote_host: str  # user@host:port
    remote_path: str  # where the file arrived (remote_dir/name), even once moved to done_dir
    remote_size: int
    remote_mtime: int
    sha256: str
    object_key: str
    object_etag: str
    moved_to: str | None
    run_id: str | None


class TransferRecords:
    def __init__(self, db: Database):
        self.db = db

    def record(self, transfer: TransferRecord) -> None:
        """One row per remote file version; a re-run updates it."""
        params = transfer.__dict__
        self.db.transaction(lambda cur: cur.execute(Q.record_transfer, params), what="record a transfer")

    def recorded_versions(self, remote_host: str, remote_paths: Iterable[str]) -> set[tuple[str, int, int]]:
        """(remote_path, size, mtime) of these paths that were already transferred."""
        paths = list(remote_paths)
        if not paths:
            return set()
        rows = self.db.rows(Q.recorded_versions, {"remote_host": remote_host, "remote_paths": paths})
        return {(row["remote_path"], row["remote_size"], row["remote_mtime"]) for row in rows}

    def all(self) -> list[dict[str, Any]]:
        return self.db.rows(Q.all_transfers)
