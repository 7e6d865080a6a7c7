"""The dead letter (table `processing_failures`) and the rule that turns a file's failure into
its outcome: what failed, where, why, whether a later try may succeed, and how often it was
tried. One open row per (archive, member, stage); a success closes it.

The step modules (raw_archive.py, opus_files.py, transcripts.py, classifications.py) record
their files' failures with `settle_in`, inside the transaction that writes their results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import psycopg2.extras

from archive_identity import ArchiveVersion
from resources.results_db.database import Database
from sql.named_queries import queries

Q = queries("failures")

# The stage each archive step records failures under; the dead-letter sensor maps a failed
# step to the same name, so the step's own row and the sensor's are one row, not two.
STAGE_OF_STEP = {
    "raw_archive": "archive",
    "opus_files": "conversion",
    "parquet_metadata": "metadata",
    "transcripts": "transcription",
    "classifications": "classification",
}


# Why a file failed decides what becomes of it:
# - "input": its bytes (not decodable, damaged, over a cap): the file fails now.
# - "unclear": a crash, a signal, a timeout, an exception of the tool. Maybe the host, maybe the
#   file: it is tried again, and its tries are counted (processing_failures.attempts, across
#   step retries and runs); after `max_attempts` it fails with its last reason, so one file that
#   always crashes its tool never holds back the others.
# - "service": the object store, the database or scratch space, after their own retries:
#   nothing about the file, so nothing is counted; the step fails at its end (an archive-wide
#   cause) and its retry does the file.
Cause = Literal["input", "unclear", "service"]


@dataclass(frozen=True)
class FileFailure:
    audio_file_id: int | None  # None for a member without an audio_files row (a parquet, a duplicate)
    original_filename: str
    stage: str
    error: str
    cause: Cause = "input"

    @property
    def retryable(self) -> bool:
        """The row was left as it was: a later try may succeed."""
        return self.cause != "input"

    def __str__(self) -> str:
        return f"{self.original_filename}: {self.error}" + ("; to be tried again" if self.retryable else "")


def record_in(
    cur, archive: ArchiveVersion, failures: Sequence[FileFailure], run_id: str | None, max_attempts: int | None = None
) -> list[FileFailure]:
    """Within the caller's transaction: one open row per failed member and stage. Returns the
    failures as they stand after this try: an "unclear" one whose file has now failed
    `max_attempts` times comes back as the file's outcome ("input"), its reason noting the count."""
    if not failures:
        return []
    recorded = psycopg2.extras.execute_values(
        cur,
        Q.record_failures,
        [
            (
                archive.key,
                archive.partition_key,
                f.original_filename,
                f.audio_file_id,
                f.stage,
                f.error,
                run_id,
                f.retryable,
                int(f.cause != "service"),
            )
            for f in failures
        ],
        fetch=True,
    )
    attempts = {(row["original_filename"], row["stage"]): row["attempts"] for row in recorded}
    settled = [
        replace(f, cause="input", error=f"{f.error} (after {attempts[f.original_filename, f.stage]} attempts)")
        if f.cause == "unclear" and max_attempts and attempts[f.original_filename, f.stage] >= max_attempts
        else f
        for f in failures
    ]
    given_up = [(archive.key, s.original_filename, s.stage, s.error) for f, s in zip(failures, settled) if f != s]
    if given_up:
        psycopg2.extras.execute_values(cur, Q.give_up_on_files, given_up)
    return settled


def resolve_files_in(cur, file_ids: Sequence[int], stages: Sequence[str]) -> None:
    if file_ids:
        cur.execute(Q.resolve_file_stages, {"ids": list(file_ids), "stages": list(stages)})


def resolve_members_in(cur, archive_key: str, names: Sequence[str]) -> None:
    """Members no longer in the archive: nothing about them is still to be fixed."""
    if names:
        cur.execute(Q.resolve_members, {"archive_key": archive_key, "names": list(names)})


# A file's status as it moves forward, and the status each stage's success gives it.
_PROGRESS = ("pending", "converted", "transcribed", "classified")
_DONE_AT = {
    "conversion": "converted",
    "upload": "converted",
    "transcription": "transcribed",
    "classification": "classified",
}
# Stages whose failure leaves no usable Opus object; later stages keep it for a retry.
STAGES_BEFORE_UPLOAD = ("archive", "conversion", "upload")


def lock_files(cur, archive: ArchiveVersion, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """{id: row (status, opus_path)} of this version's rows among `ids`, locked for the transaction."""
    cur.execute(Q.lock_files, {"ids": list(ids), "etag": archive.etag})
    return {row["id"]: row for row in cur.fetchall()}


def settle_in(
    cur,
    archive: ArchiveVersion,
    locked: dict[int, dict[str, Any]],
    failed: Sequence[FileFailure],
    run_id: str,
    max_attempts: int | None,
) -> tuple[list[FileFailure], list[FileFailure]]:
    """Within the caller's transaction, after `lock_files` (which must cover the failed files):
    the failures recorded (record_in), and the rows of the files whose failure is now their
    outcome turned `failed`, unless a row has already passed the failing stage: a finished row
    never goes backwards (the reason stays in the dead letter). Returns (every failure as it
    stands after this try, the files turned failed; the caller queues their Opus objects for
    deletion when they failed before upload)."""
    settled = record_in(cur, archive, failed, run_id, max_attempts)

    def behind(status: str, stage: str) -> bool:
        done = _DONE_AT.get(stage)
        return status == "failed" or (done is not None and status in _PROGRESS[: _PROGRESS.index(done)])

    failing = [
        f
        for f in settled
        if not f.retryable and f.audio_file_id in locked and behind(locked[f.audio_file_id]["status"], f.stage)
    ]
    change_statuses_in(
        cur,
        archive,
        [
            (f.audio_file_id, "failed", f.error, f.stage, f.stage in STAGES_BEFORE_UPLOAD)
            for f in failing
            if f.audio_file_id is not None
        ],
    )
    return settled, failing


def change_statuses_in(
    cur, archive: ArchiveVersion, changes: Sequence[tuple[int, str, str | None, str | None, bool]]
) -> None:
    """Rows (id, status, error, failed_stage, clear_opus) moved to this version with a new status;
    `clear_opus` forgets the row's Opus object (queued for deletion by the caller)."""
    if changes:
        psycopg2.extras.execute_values(
            cur,
            Q.change_file_statuses,
            [(i, archive.etag, status, error, stage, clear) for i, status, error, stage, clear in changes],
            template="(%s::bigint, %s, %s, %s, %s, %s::boolean)",
        )


class DeadLetter:
    def __init__(self, db: Database):
        self.db = db

    def record_archive_failure(
        self,
        archive_key: str,
        partition_key: str | None,
        *,
        stage: str,
        error: str,
        run_id: str | None,
        retryable: bool = False,
    ) -> None:
        """A failure of the archive as a whole (unreadable, refused, a failed run)."""
        params = {
            "archive_key": archive_key,
            "partition_key": partition_key,
            "stage": stage,
            "error": error,
            "run_id": run_id,
            "retryable": retryable,
        }
        self.db.transaction(lambda cur: cur.execute(Q.record_run_failure, params), what="record archive failure")

    def resolve_stages(self, archive_key: str, stages: Sequence[str]) -> None:
        params = {"archive_key": archive_key, "stages": list(stages)}
        self.db.transaction(lambda cur: cur.execute(Q.resolve_archive_stages, params), what="resolve failures")

    def open_failures(self, archive_key: str) -> list[dict[str, Any]]:
        return self.db.rows(Q.open_failures_of_archive, {"archive_key": archive_key})

    def failed_archives(self, archive_key: str | None) -> list[dict[str, Any]]:
        """Archives with failed files or an open archive-level failure (all, or the one named)."""
        return self.db.rows(Q.failed_archives, {"archive_key": archive_key})

    def failed_file_count(self, archive_key: str) -> int:
        return self.db.rows(Q.failed_file_count, {"archive_key": archive_key})[0]["n"]
