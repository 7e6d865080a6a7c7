"""raw_archive: the archive object of a partition, scanned safely into a manifest."""


import dagster as dg
import pandas as pd

from audio_assets.archive_access import download_and_scan, expected_etag, resolve_archive
from audio_assets.audio.tar_safety import ArchiveListing
from audio_assets.partitions import archives_partitions
from audio_assets.settings import ArchiveScanConfig
from resources.object_store import ObjectInfo, ObjectStore
from resources.results_db import FileFailure, ResultsDatabase
from resources.scratch import ScratchSpace

MANIFEST_COLUMNS = [
    "member", "kind", "size", "accepted", "reason", "audio_file_id",
    "archive_key", "archive_etag", "archive_date",
]

IO_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dg.asset(
    partitions_def=archives_partitions,
    kinds={"s3", "postgres"},
    io_manager_key="manifest_io",
    retry_policy=IO_RETRY,
    group_name="archives",
)
def raw_archive(
    context: dg.AssetExecutionContext,
    config: ArchiveScanConfig,
    object_store: ObjectStore,
    results_db: ResultsDatabase,
    scratch: ScratchSpace,
) -> dg.Output[pd.DataFrame]:
    """The archive's members, checked for unsafe entries, with one audio_files row per MP3."""
    info = resolve_archive(context, object_store)
    with scratch.step_dir(context.run.run_id, "raw_archive") as workdir:
        info, listing, download_s = download_and_scan(
            context,
            object_store=object_store,
            results_db=results_db,
            archive_key=info.key,
            workdir=workdir,
            max_member_bytes=config.max_member_bytes,
            stage="archive",
            required_etag=expected_etag(context),
        )
    if not listing.mp3s and not listing.rejected_mp3s:
        reason = "archive has no MP3 members"
        results_db.record_archive_failure(
            archive_source=info.key, partition_key=context.partition_key,
            stage="archive", error=reason, run_id=context.run.run_id,
        )
        raise dg.Failure(reason, metadata={"archive_key": info.key}, allow_retries=False)

    file_ids = _register_rows(context, results_db, info, listing)
    results_db.resolve_archive_failures(archive_source=info.key, stages=["archive"])
    manifest = build_manifest(listing, file_ids, info)
    return dg.Output(
        manifest,
        metadata={
            "archive_key": info.key,
            "archive_etag": info.etag,
            "archive_mb": round(info.size / 1e6, 3),
            "download_mb_per_s": round(info.size / 1e6 / max(download_s, 1e-6), 1),
            "mp3_members": len(listing.mp3s),
            "parquet_members": len(listing.parquets),
            "other_members": len(listing.others),
            "rejected_members": len(listing.rejected),
            "rejected": dg.MetadataValue.md(_rejected_markdown(listing)),
        },
    )


def _register_rows(
    context: dg.AssetExecutionContext, results_db: ResultsDatabase, info: ObjectInfo, listing: ArchiveListing
) -> dict[str, int]:
    common = dict(archive_source=info.key, partition_key=context.partition_key, archive_etag=info.etag)
    file_ids = results_db.register_members(**common, members=[(m.name, m.size) for m in listing.mp3s])
    # A row per rejected MP3 name; a name already used (a duplicate member of an accepted
    # or rejected one) must not overwrite that row, so it is only recorded as a failure.
    row_rejects, other_rejects = {}, []
    for rejected in listing.rejected:
        if rejected.kind == "mp3" and rejected.name not in file_ids and rejected.name not in row_rejects:
            row_rejects[rejected.name] = rejected.reason
        else:
            other_rejects.append(rejected)
    file_ids |= results_db.register_rejected_members(
        **common, rejected=list(row_rejects.items()), run_id=context.run.run_id
    )
    results_db.record_file_failures(
        archive_source=info.key,
        partition_key=context.partition_key,
        failures=[FileFailure(None, r.name, "archive", r.reason) for r in other_rejects],
        run_id=context.run.run_id,
        update_rows=False,
    )
    return file_ids


def build_manifest(listing: ArchiveListing, file_ids: dict[str, int], info: ObjectInfo) -> pd.DataFrame:
    rows = [
        (m.name, m.kind, m.size, True, None, file_ids.get(m.name)) for m in listing.members
    ] + [
        (r.name, r.kind, None, False, r.reason, file_ids.get(r.name)) for r in listing.rejected
    ]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS[:6])
    manifest["size"] = manifest["size"].astype("Int64")
    manifest["audio_file_id"] = manifest["audio_file_id"].astype("Int64")
    manifest["archive_key"] = info.key
    manifest["archive_etag"] = info.etag
    manifest["archive_date"] = info.last_modified.date().isoformat()
    return manifest


def _rejected_markdown(listing: ArchiveListing) -> str:
    if not listing.rejected:
        return "none"
    lines = ["| member | reason |", "|---|---|"]
    lines += [f"| `{r.name}` | {r.reason} |" for r in listing.rejected[:50]]
    if len(listing.rejected) > 50:
        lines.append(f"| … | {len(listing.rejected) - 50} more |")
    return "\n".join(lines)
