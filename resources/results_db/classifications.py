"""classifications' writes and the reads around them, and the one other writer of a flag:
applying a calibrated threshold (`audio-pipeline review-thresholds --apply`).

One score per (file, policy, model), committed chunk by chunk with the chunk's failures in one
fenced transaction; the files scored on every policy move on to `classified`, and when the
step ends the archive version is recorded processed (what catch-up compares). Whether a score
is flagged is decided by the database, by one rule (is_flagged, migration 020), under the
threshold in force when the row is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg2.extras

from resources.results_db import failures
from resources.results_db.database import Database, FencedArchive, Reader
from resources.results_db.failures import FileFailure
from sql.named_queries import queries

Q = queries("classifications")


@dataclass(frozen=True)
class ClassificationRow:
    audio_file_id: int
    flag_category: str
    model: str
    flag_score: float | None
    threshold: float  # the step's; one chosen for the policy and model when written wins
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


def transcripts(db: Reader, file_ids: Sequence[int], model: str) -> dict[int, ScoredTranscript]:
    rows = db.rows(Q.transcripts_of_files, {"ids": list(file_ids), "model": model})
    return {row["audio_file_id"]: ScoredTranscript(row["id"], row["transcript_text"]) for row in rows}


def transcript_identities(db: Reader, file_ids: Sequence[int], model: str) -> dict[int, tuple[int, str]]:
    """{file: (transcript id, md5 of its text)} of `model`'s transcripts, without the texts."""
    rows = db.rows(Q.transcript_identities, {"ids": list(file_ids), "model": model})
    return {row["audio_file_id"]: (row["id"], row["transcript_md5"]) for row in rows}


def scored(db: Reader, file_ids: Sequence[int], model: str) -> set[tuple[int, str, str, int | None, str | None, float]]:
    """(file, policy, policy version, transcript id, transcript md5, threshold) already scored by
    `model`: a score is current only for the transcript it was computed from."""
    rows = db.rows(Q.scored_policies, {"ids": list(file_ids), "model": model})
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


def policy_thresholds(db: Reader, model: str) -> dict[str, float]:
    """{policy: threshold} chosen per policy for `model`; policies absent use the default."""
    return {row["policy"]: row["threshold"] for row in db.rows(Q.policy_thresholds, {"model": model})}


def keep_policy_texts(run: FencedArchive, texts: dict[str, tuple[str, str]]) -> None:
    """Store {policy: (policy_version, text)} once per version, for reviewers."""
    rows = [(policy, version, text) for policy, (version, text) in texts.items()]
    if rows:
        run.transaction(lambda cur: psycopg2.extras.execute_values(cur, Q.keep_policy_texts, rows), "keep policy texts")


def record_scores(
    run: FencedArchive,
    scores: Sequence[ClassificationRow],
    classified_ids: Sequence[int],
    failed: Sequence[FileFailure],
    max_attempts: int | None = None,
) -> tuple[dict[str, int], list[FileFailure]]:
    """Upsert one score per (file, policy, model); `classified_ids` (scored on every policy) move
    on to `classified`; the files the scorer threw on are recorded (failures.settle_in).
    Returns ({policy: items flagged now}, the failures as they stand after this try)."""

    def store(cur) -> tuple[dict[str, int], list[FileFailure]]:
        cur.execute(Q.hold_thresholds_shared)
        flagged: dict[str, int] = {}
        if scores:
            written = psycopg2.extras.execute_values(
                cur,
                Q.upsert_classifications,
                [
                    (
                        r.audio_file_id,
                        r.flag_category,
                        r.model,
                        r.flag_score,
                        r.threshold,
                        r.content_truncated,
                        r.reason,
                        r.policy_version,
                        r.transcript_id,
                        r.transcript_md5,
                    )
                    for r in scores
                ],
                template="(%s::bigint, %s, %s, %s::double precision, %s::double precision, %s::boolean, %s, %s, "
                "%s::bigint, %s)",
                fetch=True,
            )
            for row in written:
                flagged[row["flag_category"]] = flagged.get(row["flag_category"], 0) + row["flagged"]
        if classified_ids:
            cur.execute(Q.advance_to_classified, {"ids": list(classified_ids), "etag": run.archive.etag})
            failures.resolve_files_in(cur, list(classified_ids), ["classification"])
        locked = failures.lock_files(cur, run.archive, [f.audio_file_id for f in failed if f.audio_file_id])
        return flagged, failures.settle_in(cur, run.archive, locked, failed, run.run_id, max_attempts)[0]

    if not (scores or classified_ids or failed):
        return {}, []
    return run.transaction(store, what="store classifications")


def record_processed(run: FencedArchive) -> None:
    """The archive's last step succeeded for the run's version (if it is still the current one)."""
    params = {"archive_key": run.archive.key, "etag": run.archive.etag}
    run.transaction(lambda cur: cur.execute(Q.record_processed, params), what="record processed")


def apply_threshold(db: Database, policy: str, model: str, threshold: float, basis: str) -> dict:
    """Flag every stored score of (policy, model) again at `threshold`, recorded on each row and
    as the threshold in force from now on (policy_thresholds), in one transaction that no
    classifications commit overlaps (hold_thresholds). Returns the counts (scores, flagged,
    newly_flagged, no_longer_flagged); none when nothing of (policy, model) is stored."""

    def apply(cur) -> dict:
        cur.execute(Q.hold_thresholds)
        cur.execute(Q.apply_threshold, {"policy": policy, "model": model, "threshold": threshold})
        counts = dict(cur.fetchone())
        if counts["scores"]:
            cur.execute(Q.record_threshold, {"policy": policy, "model": model, "threshold": threshold, "basis": basis})
        return counts

    return db.transaction(apply, what=f"apply threshold {threshold} to {policy} / {model}")
