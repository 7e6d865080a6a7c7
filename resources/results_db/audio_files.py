"""audio_files: one row per MP3 member, as raw_archive, opus_files and parquet_metadata see it.

Every write is fenced by the run's ArchiveVersion (see database.py). Statuses only move
forward (pending -> converted -> transcribed -> classified) unless the member's input changed:
its bytes (SHA-256) differ from the version the row was made from, it came back after being
removed, or it is now rejected. A file's failure turns its row `failed` (never a row already
past the failing stage); a failure that may be transient leaves the row as it was, recorded
retryable, until its file has been tried as often as it may be (failures.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from archive_identity import ArchiveVersion
from resources.results_db import failures as dead_letter
from resources.results_db.database import Database
from resources.results_db.failures import FileFailure
from resources.results_db.object_deletions import enqueue_in
from sql.named_queries import queries

Q = queries("audio_files")

FINISHED_CONVERSION = ("converted", "transcribed", "classified")
# Stages whose failure leaves no usable Opus object; later stages keep it for a retry.
STAGES_BEFORE_UPLOAD = ("archive", "conversion", "upload")


@dataclass(frozen=True)
class ExistingRow:
    id: int
    name: str
    source_sha256: str | None
    status: str
    failed_stage: str | None
    opus_path: str | None


@dataclass(frozen=True)
class RowChange:
    name: str
    status: str
    error: str | None = None
    failed_stage: str | None = None
    clear_opus: bool = False  # delete the Opus object and forget it
    drop_model_outputs: bool = False  # transcripts and scores describe audio that is gone


def plan_member_changes(
    existing: Mapping[str, ExistingRow], accepted: Mapping[str, str | None], rejected: Mapping[str, str]
) -> list[RowChange]:
    """What registering a version does to the rows of its archive.

    `accepted`: {member name: sha256 of its bytes}; `rejected`: {member name: reason} for MP3
    members the scan refused. A rejected name that is also accepted (a duplicate member) is not
    a row of its own. Rows whose status does not change are not listed.
    """
    changes = []
    for name, sha256 in accepted.items():
        row = existing.get(name)
        if row is None:
            continue  # inserted as pending
        input_changed = row.source_sha256 != sha256
        was_rejected = row.status == "failed" and row.failed_stage == "archive"
        if input_changed or row.status == "removed" or was_rejected:
            changes.append(RowChange(name, "pending", clear_opus=True, drop_model_outputs=True))
    for name, reason in rejected.items():
        if name in accepted:
            continue
        row = existing.get(name)
        if row is None or row.status != "failed" or row.failed_stage != "archive":
            changes.append(
                RowChange(
                    name, "failed", error=reason, failed_stage="archive", clear_opus=True, drop_model_outputs=True
                )
            )
    for name, row in existing.items():
        if name not in accepted and name not in rejected and row.status != "removed":
            # Kept, with its transcripts and scores, as a record of what was reviewed; the
            # views leave removed files out.
            changes.append(RowChange(name, "removed", clear_opus=True))
    return changes


@dataclass(frozen=True)
class RegisteredMembers:
    ids: dict[str, int]  # every member that has a row: accepted and rejected MP3s
    restarted: list[str]  # accepted members whose input changed (or came back)
    removed: list[str]


@dataclass(frozen=True)
class ConvertedFile:
    audio_file_id: int
    opus_key: str
    s3_uri: str
    opus_etag: str
    duration_seconds: float
    file_size_bytes: int


@dataclass(frozen=True)
class MetadataAssignment:
    original_filename: str
    metadata_source: str
    values: dict[str, Any]


class AudioFiles:
    def __init__(self, db: Database):
        self.db = db

    def register_version(
        self,
        archive: ArchiveVersion,
        *,
        accepted: Mapping[str, tuple[int, str | None]],
        rejected: Mapping[str, str],
        other_failures: Sequence[FileFailure],
        run_id: str,
    ) -> RegisteredMembers:
        """Rows for this version's MP3 members, in one fenced transaction.

        `accepted`: {name: (size, sha256)}; `rejected`: {MP3 name: reason}; `other_failures`:
        rejected members that get no row (parquets, duplicates), recorded in the dead letter.
        Objects that rows stop pointing to are queued for deletion (drain them afterwards).
        """

        def register(cur) -> RegisteredMembers:
            cur.execute(Q.lock_rows_of_archive, {"archive_key": archive.key})
            existing = {
                r["original_filename"]: ExistingRow(
                    r["id"], r["original_filename"], r["source_sha256"], r["status"], r["failed_stage"], r["opus_path"]
                )
                for r in cur.fetchall()
            }
            changes = plan_member_changes(existing, {name: sha for name, (_, sha) in accepted.items()}, rejected)
            identities = [
                (archive.key, archive.partition_key, archive.etag, name, size, sha)
                for name, (size, sha) in accepted.items()
            ] + [
                (archive.key, archive.partition_key, archive.etag, name, None, None)
                for name in rejected
                if name not in accepted
            ]
            ids = {}
            if identities:
                rows = psycopg2.extras.execute_values(cur, Q.upsert_members, identities, fetch=True)
                ids = {row["original_filename"]: row["id"] for row in rows}
            ids |= {name: row.id for name, row in existing.items() if name not in ids}
            _apply_changes(cur, archive, ids, existing, changes)
            member_failures = [
                FileFailure(ids[name], name, "archive", reason)
                for name, reason in rejected.items()
                if name not in accepted
            ]
            dead_letter.record_in(cur, archive, [*member_failures, *other_failures], run_id)
            removed = [c.name for c in changes if c.status == "removed"]
            if removed:
                cur.execute(dead_letter.Q.resolve_members, {"archive_key": archive.key, "names": removed})
            return RegisteredMembers(
                ids={name: ids[name] for name in [*accepted, *rejected] if name in ids},
                restarted=[c.name for c in changes if c.status == "pending"],
                removed=removed,
            )

        return self.db.transaction(register, fence=archive, what=f"register members of {archive}")

    def conversion_state(self, archive: ArchiveVersion) -> dict[str, dict[str, Any]]:
        """{member name: its row} for this version, to tell done files from files to convert."""
        rows = self.db.rows(Q.conversion_state, {"archive_key": archive.key, "etag": archive.etag})
        return {row["original_filename"]: row for row in rows}

    def record_conversions(
        self,
        archive: ArchiveVersion,
        converted: Sequence[ConvertedFile],
        failed: Sequence[FileFailure],
        run_id: str,
        max_attempts: int | None = None,
    ) -> list[FileFailure]:
        """One chunk of opus_files' work, committed together: converted files (the object a
        row pointed to before is queued for deletion only now, after the new one is stored) and
        failures (see `record_failures`). Returns the failures as they stand after this try."""
        new_keys = {c.audio_file_id: c.opus_key for c in converted}

        def record(cur) -> list[FileFailure]:
            locked, settled = _lock_and_record(cur, archive, [*new_keys], failed, run_id, max_attempts)
            failing = _failing(locked, settled)
            enqueue_in(
                cur,
                archive.key,
                [row["opus_path"] for i, row in locked.items() if new_keys.get(i, row["opus_path"]) != row["opus_path"]]
                + [locked[f.audio_file_id]["opus_path"] for f in failing if f.stage in STAGES_BEFORE_UPLOAD],
                "replaced by a newer conversion, or the file failed",
            )
            rows = [
                (c.audio_file_id, c.opus_key, c.s3_uri, c.opus_etag, c.duration_seconds, c.file_size_bytes)
                for c in converted
                if c.audio_file_id in locked
            ]
            if rows:
                psycopg2.extras.execute_values(
                    cur,
                    Q.mark_converted,
                    rows,
                    template="(%s::bigint, %s, %s, %s, %s::double precision, %s::bigint)",
                )
                dead_letter.resolve_files_in(cur, [r[0] for r in rows], STAGES_BEFORE_UPLOAD)
            _mark_failed(cur, archive, failing)
            return settled

        if not (converted or failed):
            return []
        return self.db.transaction(record, fence=archive, what=f"record conversions of {archive}")

    def record_failures(
        self, archive: ArchiveVersion, failed: Sequence[FileFailure], run_id: str, max_attempts: int | None = None
    ) -> list[FileFailure]:
        """Per-file failures of a step, in one fenced transaction. A file's failure (its input,
        or an unclear one tried `max_attempts` times) turns its row failed, unless the row is
        already past the stage: a finished row never goes backwards (the reason stays in the
        dead letter). Service failures (storage, database) leave the row as it was. Returns the
        failures as they stand after this try (retryable: still to try)."""

        def record(cur) -> list[FileFailure]:
            locked, settled = _lock_and_record(cur, archive, [], failed, run_id, max_attempts)
            _mark_failed(cur, archive, _failing(locked, settled))
            return settled

        if not failed:
            return []
        return self.db.transaction(record, fence=archive, what=f"record failures of {archive}")

    def store_metadata(self, archive: ArchiveVersion, assignments: Sequence[MetadataAssignment]) -> int:
        """Attach parquet rows to their files (and NULL to files without one); returns the
        number of files that got a row."""

        def store(cur) -> int:
            cur.execute(Q.clear_metadata, {"archive_key": archive.key})
            if not assignments:
                return 0
            psycopg2.extras.execute_values(
                cur,
                Q.store_metadata,
                [
                    (archive.key, m.original_filename, m.metadata_source, psycopg2.extras.Json(m.values))
                    for m in assignments
                ],
                template="(%s, %s, %s, %s::jsonb)",
                page_size=len(assignments),  # one statement, so rowcount covers every row
            )
            return cur.rowcount

        return self.db.transaction(store, fence=archive, what=f"store metadata of {archive}")

    # --- reads for the asset checks ----------------------------------------------------------

    def statuses(self, archive_key: str) -> dict[str, str]:
        rows = self.db.rows(Q.statuses_of_archive, {"archive_key": archive_key})
        return {row["original_filename"]: row["status"] for row in rows}

    def opus_objects(self, archive_key: str) -> list[dict[str, Any]]:
        return self.db.rows(Q.opus_objects_of_archive, {"archive_key": archive_key})

    def bad_durations(self, archive_key: str) -> list[dict[str, Any]]:
        return self.db.rows(Q.bad_durations_of_archive, {"archive_key": archive_key})

    def files_of_archive(self, archive_key: str) -> list[dict[str, Any]]:
        return self.db.rows(Q.files_of_archive, {"archive_key": archive_key})


def _apply_changes(
    cur, archive: ArchiveVersion, ids: dict[str, int], existing: Mapping[str, ExistingRow], changes: Sequence[RowChange]
) -> None:
    if not changes:
        return
    psycopg2.extras.execute_values(
        cur,
        Q.apply_row_changes,
        [(ids[c.name], archive.etag, c.status, c.error, c.failed_stage, c.clear_opus) for c in changes],
        template="(%s::bigint, %s, %s, %s, %s, %s::boolean)",
    )
    dropped = [ids[c.name] for c in changes if c.drop_model_outputs]
    if dropped:
        cur.execute(Q.delete_model_outputs, {"ids": dropped})
    enqueue_in(
        cur,
        archive.key,
        [existing[c.name].opus_path for c in changes if c.clear_opus and c.name in existing],
        f"member removed, changed or rejected in version {archive.etag}",
    )


# A file's status as it moves forward, and the status each stage's success gives it.
_PROGRESS = ("pending", "converted", "transcribed", "classified")
_DONE_AT = {
    "conversion": "converted",
    "upload": "converted",
    "transcription": "transcribed",
    "classification": "classified",
}


def _lock_and_record(
    cur,
    archive: ArchiveVersion,
    ids: Sequence[int],
    failed: Sequence[FileFailure],
    run_id: str,
    max_attempts: int | None,
) -> tuple[dict[int, dict[str, Any]], list[FileFailure]]:
    """The rows of `ids` and of the failed files, locked (this version's only), and the
    failures recorded in the dead letter as they stand after this try."""
    wanted = [*ids, *(f.audio_file_id for f in failed if f.audio_file_id is not None)]
    cur.execute(Q.lock_rows_by_id, {"ids": wanted, "etag": archive.etag})
    locked = {row["id"]: row for row in cur.fetchall()}
    return locked, dead_letter.record_in(cur, archive, failed, run_id, max_attempts)


def _failing(locked: Mapping[int, Mapping[str, Any]], settled: Sequence[FileFailure]) -> list[FileFailure]:
    """The files whose failure is now their outcome and whose row has not passed its stage."""

    def behind(status: str, stage: str) -> bool:
        done = _DONE_AT.get(stage)
        return status == "failed" or (done is not None and status in _PROGRESS[: _PROGRESS.index(done)])

    return [
        f
        for f in settled
        if not f.retryable and f.audio_file_id in locked and behind(locked[f.audio_file_id]["status"], f.stage)
    ]


def _mark_failed(cur, archive: ArchiveVersion, failures: Sequence[FileFailure]) -> None:
    """Rows -> failed; failures before upload also give up the Opus object (queued by the caller)."""
    if failures:
        psycopg2.extras.execute_values(
            cur,
            Q.apply_row_changes,
            [
                (f.audio_file_id, archive.etag, "failed", f.error, f.stage, f.stage in STAGES_BEFORE_UPLOAD)
                for f in failures
            ],
            template="(%s::bigint, %s, %s, %s, %s, %s::boolean)",
        )
