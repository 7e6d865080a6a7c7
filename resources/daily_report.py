"""The daily report: computed in SQL from the results tables, stored in daily_summaries."""

from typing import Any

import psycopg2.extras

from resources.results_db import ResultsDatabase


def compute_daily_summary(results_db: ResultsDatabase, day: str) -> dict[str, Any]:
    """The day's report (UTC), computed in SQL from the results tables."""
    one = lambda sql: results_db.query(sql, {"day": day})[0]  # noqa: E731
    files = one(
        """
        SELECT count(DISTINCT archive_source) AS archives_processed,
               count(*) FILTER (WHERE status <> 'failed') AS files_processed,
               count(*) FILTER (WHERE status = 'failed') AS files_failed,
               coalesce(sum(duration_seconds), 0) / 3600.0 AS audio_hours,
               extract(epoch FROM max(processed_at) - min(processed_at)) / 3600.0 AS span_hours
        FROM audio_files
        WHERE processed_at >= %(day)s::date AND processed_at < %(day)s::date + 1
        """
    )
    failed_by_stage = {
        r["stage"]: r["files"]
        for r in results_db.query(
            "SELECT failed_stage AS stage, count(*) AS files FROM audio_files WHERE status = 'failed' "
            "AND processed_at >= %(day)s::date AND processed_at < %(day)s::date + 1 GROUP BY 1 ORDER BY 1",
            {"day": day},
        )
    }
    top_errors = results_db.query(
        """
        SELECT stage, left(error, 200) AS error, count(*) AS files FROM processing_failures
        WHERE failed_at >= %(day)s::date AND failed_at < %(day)s::date + 1
        GROUP BY 1, 2 ORDER BY files DESC, stage LIMIT 10
        """,
        {"day": day},
    )
    flagged = {
        r["flag_category"]: r["files"]
        for r in results_db.query(
            "SELECT flag_category, count(DISTINCT audio_file_id) AS files FROM classifications "
            "WHERE flagged AND created_at >= %(day)s::date AND created_at < %(day)s::date + 1 "
            "GROUP BY 1 ORDER BY 1",
            {"day": day},
        )
    }
    confidence = one(
        "SELECT avg(confidence) AS mean FROM transcripts "
        "WHERE created_at >= %(day)s::date AND created_at < %(day)s::date + 1"
    )["mean"]
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
    }


def store_daily_summary(results_db: ResultsDatabase, summary: dict[str, Any]) -> None:
    json_columns = {"failed_by_stage", "top_errors", "flagged_by_category"}
    values = {k: psycopg2.extras.Json(v) if k in json_columns else v for k, v in summary.items()}
    with results_db.connect() as conn, conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO daily_summaries (day, archives_processed, files_processed, files_failed,
                failed_by_stage, top_errors, flagged_by_category, mean_confidence, audio_hours, files_per_hour)
            VALUES (%(day)s, %(archives_processed)s, %(files_processed)s, %(files_failed)s, %(failed_by_stage)s,
                    %(top_errors)s, %(flagged_by_category)s, %(mean_confidence)s, %(audio_hours)s, %(files_per_hour)s)
            ON CONFLICT (day) DO UPDATE SET
                archives_processed = EXCLUDED.archives_processed, files_processed = EXCLUDED.files_processed,
                files_failed = EXCLUDED.files_failed, failed_by_stage = EXCLUDED.failed_by_stage,
                top_errors = EXCLUDED.top_errors, flagged_by_category = EXCLUDED.flagged_by_category,
                mean_confidence = EXCLUDED.mean_confidence, audio_hours = EXCLUDED.audio_hours,
                files_per_hour = EXCLUDED.files_per_hour, generated_at = now()
            """,
            values,
        )
