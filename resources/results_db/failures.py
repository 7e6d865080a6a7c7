"""The dead letter (table `processing_failures`): what failed, where, why, and whether a
later attempt may succeed. One open row per (archive, member, stage); a success closes it."""

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


class DeadLetter:
    def __init__(self, db: Database):
        self.db = db

    def replace_member_failures(
        self, archive: ArchiveVersion, stage: str, failures: Sequence[FileFailure], run_id: str | None
    ) -> None:
        """`failures` are now all the open member rows of `stage` (a step that reads every
        member each time, like parquet_metadata): the others are closed, in one transaction."""

        def replace(cur) -> None:
            still_open = [f.original_filename for f in failures]
            cur.execute(
                Q.resolve_other_members_of_stage,
                {"archive_key": archive.key, "stage": stage, "still_open": still_open},
            )
            record_in(cur, archive, failures, run_id)

        self.db.transaction(replace, what="replace member failures")

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

    def failed_archives(self, archive: str | None) -> list[dict[str, Any]]:
        """Archives with failed files or an open archive-level failure; `archive` (partition
        key, object key or file name) narrows it to one."""
        return self.db.rows(Q.failed_archives, {"archive": archive})

    def failed_file_count(self, archive_key: str) -> int:
        return self.db.rows(Q.failed_file_count, {"archive_key": archive_key})[0]["n"]
