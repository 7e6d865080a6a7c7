"""opus_files' writes and the reads around them: which files of the version still need an Opus
object, each chunk of conversions and failures committed in one fenced transaction, and what
the asset checks read back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from resources.results_db import failures
from resources.results_db.database import FencedArchive, Reader
from resources.results_db.failures import STAGES_BEFORE_UPLOAD, FileFailure
from resources.results_db.object_deletions import enqueue_in
from sql.named_queries import queries

Q = queries("opus_files")

FINISHED_CONVERSION = ("converted", "transcribed", "classified")


def has_opus(row: dict[str, Any]) -> bool:
    """The row's conversion is done: it has its Opus object and is converted or further along,
    or failed at a stage after upload (transcription, classification), which keeps the object
    for that stage's next try. Converting such a file again would re-encode, upload and delete
    an object on every run of the archive, and fail it again."""
    passed = row["status"] in FINISHED_CONVERSION or (
        row["status"] == "failed" and row["failed_stage"] not in STAGES_BEFORE_UPLOAD
    )
    return bool(passed and row["opus_path"])


@dataclass(frozen=True)
class ConvertedFile:
    audio_file_id: int
    opus_key: str
    s3_uri: str
    opus_etag: str
    duration_seconds: float
    file_size_bytes: int


def conversion_state(run: FencedArchive) -> dict[str, dict[str, Any]]:
    """{member name: its row} for the run's version, to tell done files from files to convert."""
    rows = run.rows(Q.conversion_state, {"archive_key": run.archive.key, "etag": run.archive.etag})
    return {row["original_filename"]: row for row in rows}


def record_conversions(
    run: FencedArchive,
    converted: Sequence[ConvertedFile],
    failed: Sequence[FileFailure],
    max_attempts: int | None = None,
) -> list[FileFailure]:
    """One chunk of the step's work, committed together: converted files (the object a row
    pointed to before is queued for deletion only now, after the new one is stored) and the
    failures (failures.settle_in). Returns the failures as they stand after this try."""
    new_keys = {c.audio_file_id: c.opus_key for c in converted}

    def record(cur) -> list[FileFailure]:
        ids = [*new_keys, *(f.audio_file_id for f in failed if f.audio_file_id is not None)]
        locked = failures.lock_files(cur, run.archive, ids)
        settled, failing = failures.settle_in(cur, run.archive, locked, failed, run.run_id, max_attempts)
        enqueue_in(
            cur,
            run.archive.key,
            [row["opus_path"] for i, row in locked.items() if new_keys.get(i, row["opus_path"]) != row["opus_path"]]
            + [locked[i]["opus_path"] for f in failing if f.stage in STAGES_BEFORE_UPLOAD and (i := f.audio_file_id)],
            "replaced by a newer conversion, or the file failed",
        )
        rows = [
            (c.audio_file_id, c.opus_key, c.s3_uri, c.opus_etag, c.duration_seconds, c.file_size_bytes)
            for c in converted
            if c.audio_file_id in locked
        ]
        if rows:
            psycopg2.extras.execute_values(
                cur, Q.mark_converted, rows, template="(%s::bigint, %s, %s, %s, %s::double precision, %s::bigint)"
            )
            failures.resolve_files_in(cur, [r[0] for r in rows], STAGES_BEFORE_UPLOAD)
        return settled

    if not (converted or failed):
        return []
    return run.transaction(record, what="record conversions")


# --- what the asset checks read back -------------------------------------------------------------


def statuses(db: Reader, archive_key: str) -> dict[str, str]:
    rows = db.rows(Q.statuses_of_archive, {"archive_key": archive_key})
    return {row["original_filename"]: row["status"] for row in rows}


def opus_objects(db: Reader, archive_key: str) -> list[dict[str, Any]]:
    return db.rows(Q.opus_objects_of_archive, {"archive_key": archive_key})


def bad_durations(db: Reader, archive_key: str) -> list[dict[str, Any]]:
    return db.rows(Q.bad_durations_of_archive, {"archive_key": archive_key})
