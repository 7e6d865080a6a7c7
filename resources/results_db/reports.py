"""Read models for people: the RAs' daily report, `audio-pipeline status`, the demo summary."""

from __future__ import annotations

from typing import Any

import psycopg2.extras

from resources.results_db.database import Database
from sql.named_queries import queries

Q = queries("reports")
_JSON_COLUMNS = (
    "failed_by_stage",
    "top_errors",
    "flagged_by_category",
    "review_precision",
    "review_agreement",
    "review_decisions_by_ra",
    "review_recall",
)


class Reports:
    def __init__(self, db: Database):
        self.db = db

    def daily_summary(self, day: str) -> dict[str, Any]:
        """The day's report (UTC), computed in SQL from the results tables in one snapshot."""

        def compute(cur) -> dict[str, Any]:
            params = {"day": day}
            cur.execute(Q.day_file_counts, params)
            files = cur.fetchone()
            cur.execute(Q.day_failed_by_stage, params)
            failed_by_stage = {r["stage"]: r["files"] for r in cur.fetchall()}
            cur.execute(Q.day_top_errors, params)
            top_errors = [dict(r) for r in cur.fetchall()]
            cur.execute(Q.day_flagged_by_category, params)
            flagged = {r["flag_category"]: r["files"] for r in cur.fetchall()}
            cur.execute(Q.day_mean_confidence, params)
            confidence = cur.fetchone()["mean"]
            review = _review_figures(cur, params)
            span = float(files["span_hours"] or 0)
            processed = files["files_processed"] + files["files_failed"]
            return {
                "day": day,
                "archives_processed": files["archives_processed"],
                "files_processed": files["files_processed"],
                "files_failed": files["files_failed"],
                "failed_by_stage": failed_by_stage,
                "top_errors": top_errors,
                "flagged_by_category": flagged,
                "mean_confidence": float(confidence) if confidence is not None else None,
                "audio_hours": round(float(files["audio_hours"]), 4),
                # Over the span between the day's first and last processed file; None for one instant.
                "files_per_hour": round(processed / span, 1) if span > 0 else None,
                **review,
            }

        return self.db.transaction(compute, what=f"compute the daily summary of {day}")

    def store_daily_summary(self, summary: dict[str, Any]) -> None:
        values = {k: psycopg2.extras.Json(v) if k in _JSON_COLUMNS else v for k, v in summary.items()}
        self.db.transaction(lambda cur: cur.execute(Q.store_daily_summary, values), what="store the daily summary")

    def archive_progress(self, archive_key: str | None, limit: int) -> list[dict[str, Any]]:
        return self.db.rows(Q.archive_progress, {"archive_key": archive_key, "limit": limit})

    def open_archive_failures(self, archive_key: str | None, limit: int) -> list[dict[str, Any]]:
        return self.db.rows(Q.open_archive_failures, {"archive_key": archive_key, "limit": limit})

    def overview(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """(title, rows) tables for the demo's closing summary."""
        tables = [
            ("files per archive (audio_files)", Q.files_per_archive),
            ("transcripts", Q.transcript_overview),
            ("daily_stats (view)", Q.daily_stats),
            ("ra_queue (view; flagged items of the last 24 h)", Q.ra_queue_overview),
            ("open failures (processing_failures)", Q.open_failures_overview),
        ]
        return [(title, self.db.rows(sql, what=title)) for title, sql in tables]


def _review_figures(cur, params: dict) -> dict[str, list[dict[str, Any]]]:
    """What the RAs decided that day, for whoever tunes thresholds and policies: precision of
    the flags per policy and model, decisions per RA, Cohen's kappa on double-coded items, and
    recall from the audit sample (all with Wilson intervals where they are proportions)."""
    figures = {}
    for name, sql in (
        ("review_precision", Q.day_review_precision),
        ("review_decisions_by_ra", Q.day_decisions_by_ra),
        ("review_agreement", Q.review_agreement),
        ("review_recall", Q.review_recall),
    ):
        cur.execute(sql, params)
        figures[name] = [dict(row) for row in cur.fetchall()]
    return figures
