"""transcripts' writes: one transcript per (file, model), committed chunk by chunk with the
chunk's failures in one fenced transaction, so a worker lost mid-step costs the chunk in flight
and a retry skips what is stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from resources.results_db import failures
from resources.results_db.database import FencedArchive, Reader
from resources.results_db.failures import FileFailure
from sql.named_queries import queries

Q = queries("transcripts")


@dataclass(frozen=True)
class TranscriptRow:
    audio_file_id: int
    model: str
    text: str
    language: str | None
    confidence: float | None
    segments: list[dict[str, Any]]


def transcribed_ids(db: Reader, file_ids: Sequence[int], model: str) -> set[int]:
    rows = db.rows(Q.files_with_transcript, {"ids": list(file_ids), "model": model})
    return {row["audio_file_id"] for row in rows}


def record_transcripts(
    run: FencedArchive,
    transcripts: Sequence[TranscriptRow],
    failed: Sequence[FileFailure],
    max_attempts: int | None = None,
) -> list[FileFailure]:
    """Upsert one transcript per (file, model), the files moving on to `transcribed`, and the
    chunk's failures (failures.settle_in); returns the failures as they stand after this try."""
    ids = [t.audio_file_id for t in transcripts]

    def store(cur) -> list[FileFailure]:
        if transcripts:
            psycopg2.extras.execute_values(
                cur,
                Q.upsert_transcripts,
                [
                    (t.audio_file_id, t.model, t.text, t.language, t.confidence, psycopg2.extras.Json(t.segments))
                    for t in transcripts
                ],
            )
            cur.execute(Q.advance_to_transcribed, {"ids": ids, "etag": run.archive.etag})
            failures.resolve_files_in(cur, ids, ["transcription"])
        locked = failures.lock_files(cur, run.archive, [f.audio_file_id for f in failed if f.audio_file_id])
        return failures.settle_in(cur, run.archive, locked, failed, run.run_id, max_attempts)[0]

    if not (transcripts or failed):
        return []
    return run.transaction(store, what="store transcripts")


def transcripts_of_archive(db: Reader, archive_key: str) -> dict[str, str]:
    """{member name: transcript text} of the archive's files, any model (the benchmarks compare
    them with bare WhisperX)."""
    rows = db.rows(Q.transcripts_of_archive, {"archive_key": archive_key})
    return {row["original_filename"]: row["transcript_text"] for row in rows}
