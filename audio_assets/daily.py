"""daily_summary: one report per UTC day, in PostgreSQL (daily_report view) and as Parquet."""

import io
import json

import dagster as dg
import pandas as pd

from audio_assets.archive_job import gated_step
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase

daily_partitions = dg.DailyPartitionsDefinition(start_date="2026-11-01", timezone="UTC")


@dg.asset(partitions_def=daily_partitions, kinds={"postgres", "parquet", "s3"}, group_name="reports")
@gated_step
def daily_summary(
    context: dg.AssetExecutionContext, object_store: ObjectStore, results_db: ResultsDatabase
) -> dg.MaterializeResult:
    """The day's report: archives and files processed, failures by stage, flags, confidence."""
    day = context.partition_key
    summary = results_db.reports.daily_summary(day)
    results_db.reports.store_daily_summary(summary)
    # Nested values as JSON text: one flat row that pandas, duckdb and spreadsheets all read.
    frame = pd.DataFrame([{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in summary.items()}])
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    key = f"reports/{day}.parquet"
    object_store.put_bytes(key, buffer.getvalue(), content_type="application/vnd.apache.parquet")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(_report_markdown(summary)),
            "report_uri": f"s3://{object_store.bucket}/{key}",
            "files_processed": summary["files_processed"],
            "files_failed": summary["files_failed"],
        }
    )


def _report_markdown(summary: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary.items() if name not in _LISTS]
    lines += ["", "**top errors**", ""]
    lines += [f"- {e['stage']}: {e['error']} ({e['files']} files)" for e in summary["top_errors"]] or ["- none"]
    # The RAs' decisions of the day (review console): what tuning thresholds and policies needs.
    lines += ["", "**flag precision (RA decisions of the day)**", ""]
    lines += [
        f"- {p['policy']} / {p['classifier_model']}: {p['precision']} [{p['precision_low']}, {p['precision_high']}]"
        f" over {p['decisions']} decisions"
        for p in summary["review_precision"]
    ] or ["- no decisions"]
    lines += ["", "**recall of the flags (recall audit sample; Wilson 95 % intervals)**", ""]
    lines += [
        f"- {r['policy']} / {r['classifier_model']}: recall {r['recall']} [{r['recall_low']}, {r['recall_high']}],"
        f" false-negative rate {r['false_negative_rate']} over {r['audit_decisions']} audit decisions"
        for r in summary["review_recall"]
    ] or ["- nothing classified"]
    lines += ["", "**agreement on double-coded items (Cohen's kappa)**", ""]
    lines += [f"- {a['policy']}: {a['kappa']} over {a['items']} items" for a in summary["review_agreement"]] or [
        "- none yet"
    ]
    lines += ["", "**decisions per RA**", ""]
    lines += [f"- {r['username']}: {r['decisions']}" for r in summary["review_decisions_by_ra"]] or ["- none"]
    return "\n".join(lines)


_LISTS = ("top_errors", "review_precision", "review_agreement", "review_decisions_by_ra", "review_recall")


daily_summary_job = dg.define_asset_job("daily_summary_job", selection=[daily_summary])

# Shortly after midnight UTC, the day that just ended is reported.
daily_summary_schedule = dg.build_schedule_from_partitioned_job(
    daily_summary_job,
    name="daily_summary_schedule",
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
