"""Asset checks on each archive partition: nothing lost, objects match rows, sane durations.

A check that fails (or raises) is recorded by the dead-letter sensor under stage
`step:<its step key>`; the check's next pass for the archive closes that row."""

from concurrent.futures import ThreadPoolExecutor

import dagster as dg

from audio_assets.archive_job import archives_partitions, gated_step
from audio_assets.opus_files import opus_files
from resources.manifest_io import ArchiveTable
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from resources.results_db import opus_files as opus_files_db

_MANIFEST = {"raw_archive": dg.AssetIn("raw_archive")}


def _checked(
    context: dg.AssetCheckExecutionContext, results_db: ResultsDatabase, archive_key: str, passed: bool, metadata: dict
) -> dg.AssetCheckResult:
    """The check's result; a pass closes the archive's open failure of this step."""
    if passed:
        results_db.failures.resolve_stages(archive_key, [f"step:{context.op_execution_context.op_handle}"])
    return dg.AssetCheckResult(passed=passed, metadata=metadata)


@dg.asset_check(asset=opus_files, partitions_def=archives_partitions, additional_ins=_MANIFEST, blocking=True)
@gated_step
def every_mp3_has_one_row(
    context: dg.AssetCheckExecutionContext, raw_archive: ArchiveTable, results_db: ResultsDatabase
) -> dg.AssetCheckResult:
    """Every MP3 member of the archive version (accepted or rejected) has exactly one finished
    row; rows of members the version no longer has are marked removed, never left pending."""
    manifest = raw_archive.rows
    members = set(manifest.loc[manifest["kind"] == "mp3", "member"])
    statuses = opus_files_db.statuses(results_db, raw_archive.archive.key)
    missing = sorted(members - set(statuses))
    unfinished = sorted(name for name, status in statuses.items() if status == "pending")
    stale = sorted(name for name, status in statuses.items() if name not in members and status != "removed")
    return _checked(
        context,
        results_db,
        raw_archive.archive.key,
        not (missing or unfinished or stale),
        {
            "mp3_members": len(members),
            "rows": len(statuses),
            "removed_rows": sum(1 for s in statuses.values() if s == "removed"),
            "missing": ", ".join(missing[:20]) or "none",
            "still_pending": ", ".join(unfinished[:20]) or "none",
            "not_in_archive_but_not_removed": ", ".join(stale[:20]) or "none",
        },
    )


@dg.asset_check(asset=opus_files, partitions_def=archives_partitions, additional_ins=_MANIFEST)
@gated_step
def opus_objects_match_rows(
    context: dg.AssetCheckExecutionContext,
    raw_archive: ArchiveTable,
    results_db: ResultsDatabase,
    object_store: ObjectStore,
) -> dg.AssetCheckResult:
    """Every converted row's Opus object exists and is the one the row committed: its ETag and
    size are the row's (another upload to the key would have another ETag)."""
    rows = opus_files_db.opus_objects(results_db, raw_archive.archive.key)
    with ThreadPoolExecutor(max_workers=8) as pool:
        heads = list(pool.map(lambda r: object_store.head(r["opus_path"]) if r["opus_path"] else None, rows))
    bad = [
        f"{row['opus_path']}: "
        + (
            "missing"
            if head is None
            else f"ETag {head.etag}, {head.size} B; row says {row['opus_etag']}, {row['file_size_bytes']} B"
        )
        for row, head in zip(rows, heads)
        if head is None or (head.etag, head.size) != (row["opus_etag"], row["file_size_bytes"])
    ]
    return _checked(
        context,
        results_db,
        raw_archive.archive.key,
        not bad,
        {"objects_checked": len(rows), "mismatches": len(bad), "examples": "; ".join(bad[:10]) or "none"},
    )


@dg.asset_check(asset=opus_files, partitions_def=archives_partitions, additional_ins=_MANIFEST)
@gated_step
def durations_are_positive(
    context: dg.AssetCheckExecutionContext, raw_archive: ArchiveTable, results_db: ResultsDatabase
) -> dg.AssetCheckResult:
    """A converted file always has a positive recorded duration."""
    rows = opus_files_db.bad_durations(results_db, raw_archive.archive.key)
    return _checked(
        context,
        results_db,
        raw_archive.archive.key,
        not rows,
        {
            "bad_durations": len(rows),
            "examples": ", ".join(r["original_filename"] for r in rows[:10]) or "none",
        },
    )


archive_checks = [every_mp3_has_one_row, opus_objects_match_rows, durations_are_positive]
