"""transcripts and classifications: what the GPU steps write, committed chunk by chunk.

Each chunk is one fenced transaction, so a worker lost mid-step costs the chunk in flight and
a retry skips what is already stored (a transcript for this model; a score for this policy
version and model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from archive_identity import ArchiveVersion
from resources.results_db import failures as dead_letter
from resources.results_db.database import Database
from sql.named_queries import queries

Q = queries("model_outputs")


@dataclass(frozen=True)
class TranscriptRow:
    audio_file_id: int
    model: str
    text: str
    language: str | None
    confidence: float | None
    segments: list[dict[str, Any]]


@dataclass(frozen=True)
class ClassificationRow:
    audio_file_id: int
    flag_category: str
    model: str
    flag_score: float | None
    flagged: bool
    threshold: float
    content_truncated: bool
    reason: str | None
    policy_version: str = ""
    transcript_id: int | None = None  # the transcript row scored
    transcript_md5: str | None = None  # md5 of the text scored (a re-transcription to new text changes it)


@dataclass(frozen=True)
class ScoredTranscript:
    """The transcript a classification is computed from: its row, its text and the text's md5."""

    transcript_id: int
    text: str

    @property
    def md5(self) -> str:
        # The same digest as PostgreSQL's md5(text) over the UTF-8 database encoding.
        return hashlib.md5(self.text.encode("utf-8")).hexdigest()


class ModelOutputs:
    def __init__(self, db: Database):
        self.db = db

    def transcribed_ids(self, file_ids: Sequence[int], model: str) -> set[int]:
        rows = self.db.rows(Q.files_with_transcript, {"ids": list(file_ids), "model": model})
        return {row["audio_file_id"] for row in rows}

    def store_transcripts(self, archive: ArchiveVersion, transcripts: Sequence[TranscriptRow]) -> None:
        """Upsert one transcript per (file, model); the files move on to 'transcribed'."""
        if not transcripts:
            return
        ids = [t.audio_file_id for t in transcripts]

        def store(cur) -> None:
            psycopg2.extras.execute_values(
                cur,
                Q.upsert_transcripts,
                [
                    (t.audio_file_id, t.model, t.text, t.language, t.confidence, psycopg2.extras.Json(t.segments))
                    for t in transcripts
                ],
            )
            cur.execute(Q.advance_to_transcribed, {"ids": ids, "etag": archive.etag})
            dead_letter.resolve_files_in(cur, ids, ["transcription"])

        self.db.transaction(store, fence=archive, what=f"store transcripts of {archive}")

    def transcripts(self, file_ids: Sequence[int], model: str) -> dict[int, ScoredTranscript]:
        rows = self.db.rows(Q.transcripts_of_files, {"ids": list(file_ids), "model": model})
        return {row["audio_file_id"]: ScoredTranscript(row["id"], row["transcript_text"]) for row in rows}

    def transcript_identities(self, file_ids: Sequence[int], model: str) -> dict[int, tuple[int, str]]:
        """{file: (transcript id, md5 of its text)} of `model`'s transcripts, without the texts."""
        rows = self.db.rows(Q.transcript_identities, {"ids": list(file_ids), "model": model})
        return {row["audio_file_id"]: (row["id"], row["transcript_md5"]) for row in rows}

    def transcripts_of_archive(self, archive_key: str) -> dict[str, str]:
        """{member name: transcript text} of the archive's files, any model."""
        rows = self.db.rows(Q.transcripts_of_archive, {"archive_key": archive_key})
        return {row["original_filename"]: row["transcript_text"] for row in rows}

    def scored(self, file_ids: Sequence[int], model: str) -> set[tuple[int, str, str, int | None, str | None, float]]:
        """(file, policy, policy version, transcript id, transcript md5, threshold) already
        scored by `model`: a score is current only for the transcript it was computed from."""
        rows = self.db.rows(Q.scored_policies, {"ids": list(file_ids), "model": model})
        return {
            (
                row["audio_file_id"],
                row["flag_category"],
                row["policy_version"],
                row["transcript_id"],
                row["transcript_md5"],
                row["threshold"],
            )
            for row in rows
        }

    def policy_thresholds(self, model: str) -> dict[str, float]:
        """{policy: threshold} chosen per policy for `model`; policies absent use the default."""
        rows = self.db.rows(Q.policy_thresholds, {"model": model})
        return {row["policy"]: row["threshold"] for row in rows}

    def keep_policy_texts(self, texts: dict[str, tuple[str, str]]) -> None:
        """Store {policy: (policy_version, text)} once per version, for reviewers."""
        rows = [(policy, version, text) for policy, (version, text) in texts.items()]
        if rows:
            self.db.transaction(
                lambda cur: psycopg2.extras.execute_values(cur, Q.keep_policy_texts, rows), what="keep the policy texts"
            )

    def store_classifications(
        self, archive: ArchiveVersion, rows: Sequence[ClassificationRow], classified_ids: Sequence[int]
    ) -> None:
        """Upsert one score per (file, policy, model); `classified_ids` (scored on every
        policy) move on to 'classified'."""

        def store(cur) -> None:
            if rows:
                psycopg2.extras.execute_values(
                    cur,
                    Q.upsert_classifications,
                    [
                        (
                            r.audio_file_id,
                            r.flag_category,
                            r.model,
                            r.flag_score,
                            r.flagged,
                            r.threshold,
                            r.content_truncated,
                            r.reason,
                            r.policy_version,
                            r.transcript_id,
                            r.transcript_md5,
                        )
                        for r in rows
                    ],
                )
            if classified_ids:
                cur.execute(Q.advance_to_classified, {"ids": list(classified_ids), "etag": archive.etag})
                dead_letter.resolve_files_in(cur, list(classified_ids), ["classification"])

        if rows or classified_ids:
            self.db.transaction(store, fence=archive, what=f"store classifications of {archive}")
