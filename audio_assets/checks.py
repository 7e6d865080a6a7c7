"""Asset checks on each archive partition: nothing lost, objects match rows, sane durations."""


from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pandas as pd

from audio_assets.archive_access import ArchiveRef
from audio_assets.opus import opus_files
from audio_assets.partitions import archives_partitions
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase

_MANIFEST = {"raw_archive": dg.AssetIn("raw_archive")}


@dg.asset_check(asset=opus_files, partitions_def=archives_partitions, additional_ins=_MANIFEST, blocking=True)
def every_mp3_has_one_row(raw_archive: pd.DataFrame, results_db: ResultsDatabase) -> dg.AssetCheckResult:
    """Every MP3 member of the archive (accepted or rejected) has exactly one finished row."""
    archive = ArchiveRef.from_manifest(raw_archive)
    members = set(raw_archive.loc[raw_archive["kind"] == "mp3", "member"])
    rows = results_db.query(
        "SELECT original_filename, status FROM audio_files WHERE archive_source = %s", (archive.key,)
    )
    names = [r["original_filename"] for r in rows]
    missing = sorted(members - set(names))
    unfinished = sorted(r["original_filename"] for r in rows if r["status"] == "pending")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    return dg.AssetCheckResult(
        passed=not (missing or unfinished or duplicates),
        metadata={
            "mp3_members": len(members),
            "rows": len(rows),
            "missing": ", ".join(missing[:20]) or "none",
            "still_pending": ", ".join(unfinished[:20]) or "none",
            "duplicated": ", ".join(duplicates[:20]) or "none",
        },
    )


@dg.asset_check(asset=opus_files, partitions_def=archives_partitions, additional_ins=_MANIFEST)
def opus_objects_match_rows(
    raw_archive: pd.DataFrame, results_db: ResultsDatabase, object_store: ObjectStore
) -> dg.AssetCheckResult:
    """Every converted row's Opus object exists with the size recorded on the row."""
    archive = ArchiveRef.from_manifest(raw_archive)
    rows = results_db.query(
        "SELECT opus_path, file_size_bytes FROM audio_files "
        "WHERE archive_source = %s AND status <> 'failed' AND status <> 'pending'",
        (archive.key,),
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        heads = list(pool.map(lambda r: object_store.head(r["opus_path"]) if r["opus_path"] else None, rows))
    bad = [
        f"{row['opus_path']}: " + ("missing" if head is None else f"{head.size} B, row says {row['file_size_bytes']} B")
        for row, head in zip(rows, heads)
        if head is None or head.size != row["file_size_bytes"]
    ]
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"objects_checked": len(rows), "mismatches": len(bad), "examples": "; ".join(bad[:10]) or "none"},
    )


@dg.asset_check(asset=opus_files, partitions_def=archives_partitions, additional_ins=_MANIFEST)
def durations_are_positive(raw_archive: pd.DataFrame, results_db: ResultsDatabase) -> dg.AssetCheckResult:
    """A converted file always has a positive recorded duration."""
    archive = ArchiveRef.from_manifest(raw_archive)
    rows = results_db.query(
        "SELECT original_filename, duration_seconds FROM audio_files WHERE archive_source = %s "
        "AND status IN ('converted', 'transcribed', 'classified') "
        "AND (duration_seconds IS NULL OR duration_seconds <= 0)",
        (archive.key,),
    )
    return dg.AssetCheckResult(
        passed=not rows,
        metadata={"bad_durations": len(rows), "examples": ", ".join(r["original_filename"] for r in rows[:10]) or "none"},
    )


archive_checks = [every_mp3_has_one_row, opus_objects_match_rows, durations_are_positive]
