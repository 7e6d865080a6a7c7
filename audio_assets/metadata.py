"""parquet_metadata: parquet rows joined to their MP3s by meta_id and stored as JSONB."""


import dagster as dg
import pandas as pd

from audio_assets.archive import IO_RETRY
from audio_assets.archive_access import ArchiveRef, download_and_scan
from audio_assets.audio.metadata_rows import MetadataFileError, join_metadata, read_metadata_table
from audio_assets.partitions import archives_partitions
from audio_assets.settings import ArchiveScanConfig
from resources.object_store import ObjectStore
from resources.results_db import FileFailure, MetadataAssignment, ResultsDatabase
from resources.scratch import ScratchSpace


@dg.asset(
    partitions_def=archives_partitions,
    kinds={"parquet", "postgres"},
    retry_policy=IO_RETRY,
    group_name="archives",
)
def parquet_metadata(
    context: dg.AssetExecutionContext,
    config: ArchiveScanConfig,
    raw_archive: pd.DataFrame,
    object_store: ObjectStore,
    results_db: ResultsDatabase,
    scratch: ScratchSpace,
) -> dg.MaterializeResult:
    """Each MP3's parquet row (meta_id = file stem) on audio_files.parquet_metadata."""
    archive = ArchiveRef.from_manifest(raw_archive)
    accepted = raw_archive[raw_archive["accepted"]]
    mp3_names = accepted.loc[accepted["kind"] == "mp3", "member"].tolist()
    parquet_names = sorted(accepted.loc[accepted["kind"] == "parquet", "member"])

    tables, unreadable = [], []
    with scratch.step_dir(context.run.run_id, "parquet_metadata") as workdir:
        if parquet_names:
            _, listing, _ = download_and_scan(
                context, object_store=object_store, results_db=results_db, archive_key=archive.key,
                workdir=workdir, max_member_bytes=config.max_member_bytes, stage="metadata",
                required_etag=archive.etag, extract_kinds=frozenset({"parquet"}),
            )
            paths = {m.name: m.path for m in listing.parquets}
            for name in parquet_names:
                try:
                    tables.append((name, read_metadata_table(paths[name])))
                except MetadataFileError as exc:
                    unreadable.append(FileFailure(None, name, "metadata", str(exc)))

    join = join_metadata(mp3_names, tables)
    results_db.store_metadata(
        archive_source=archive.key,
        assignments=[
            MetadataAssignment(name, match.source_member, match.values) for name, match in join.matched.items()
        ],
    )
    results_db.record_file_failures(
        archive_source=archive.key, partition_key=context.partition_key, failures=unreadable,
        run_id=context.run.run_id, update_rows=False,
    )
    if unreadable:
        context.log.warning(f"{len(unreadable)} parquet member(s) unreadable: {[f.error for f in unreadable]}")

    return dg.MaterializeResult(
        metadata={
            "parquet_files": len(parquet_names),
            "unreadable_parquet_files": len(unreadable),
            "rows": sum(len(t.rows) for _, t in tables),
            "rows_without_meta_id": sum(t.rows_without_meta_id for _, t in tables),
            "matched": len(join.matched),
            "rows_without_mp3": len(join.rows_without_mp3),
            "mp3s_without_row": len(join.mp3s_without_row),
            "duplicate_meta_ids": len(join.duplicate_meta_ids),
            "ambiguous_stems": len(join.ambiguous_stems),
            "problems": dg.MetadataValue.md(_problems_markdown(join, unreadable)),
        }
    )


def _problems_markdown(join, unreadable: list[FileFailure]) -> str:
    lines = [f"- unreadable `{f.original_filename}`: {f.error}" for f in unreadable]
    lines += [f"- row with no MP3: meta_id `{meta_id}` in `{src}`" for src, meta_id in join.rows_without_mp3[:20]]
    lines += [f"- MP3 with no row: `{name}`" for name in join.mp3s_without_row[:20]]
    lines += [
        f"- duplicate meta_id `{meta_id}`: kept `{winner}`, ignored `{loser}`"
        for meta_id, winner, loser in join.duplicate_meta_ids[:20]
    ]
    lines += [f"- ambiguous stem `{stem}` (several MP3s share it)" for stem in join.ambiguous_stems[:20]]
    return "\n".join(lines) or "none"
