"""parquet_metadata: parquet rows joined to their MP3s by meta_id and stored as JSONB."""

from pathlib import Path, PurePosixPath

import dagster as dg

from audio_assets.archive_job import archive_asset
from audio_assets.settings import MIB, MetadataConfig
from media.metadata_rows import (
    ArchiveMetadataBudget,
    MetadataFileError,
    MetadataJoin,
    MetadataTable,
    duplicate_reports,
    join_metadata,
    read_metadata_table,
)
from media.tar_safety import iter_archive
from resources.archive_run import ArchiveRun
from resources.manifest_io import ArchiveTable
from resources.results_db.failures import FileFailure
from resources.results_db.parquet_metadata import MetadataAssignment, store_metadata


@archive_asset(kinds={"parquet", "postgres"}, manifest=False)
def parquet_metadata(
    context: dg.AssetExecutionContext, config: MetadataConfig, raw_archive: ArchiveTable, archive_run: ArchiveRun
) -> dg.MaterializeResult:
    """Each MP3's parquet row (meta_id = file stem) on audio_files.parquet_metadata."""
    manifest = raw_archive.rows
    with archive_run.step(context, raw_archive) as held:
        accepted = manifest[manifest["accepted"]]
        mp3_names = accepted.loc[accepted["kind"] == "mp3", "member"].tolist()
        parquet_names = set(accepted.loc[accepted["kind"] == "parquet", "member"])
        tables, unreadable = [], []
        if parquet_names:
            stems = {PurePosixPath(name).stem for name in mp3_names}
            with held.workdir() as workdir:
                for name, table in read_parquet_members(held.local_copy(), parquet_names, stems, workdir, config):
                    if isinstance(table, MetadataFileError):
                        unreadable.append(FileFailure(None, name, "metadata", str(table)))
                    else:
                        tables.append((name, table))
        join = join_metadata(mp3_names, tables)
        problems = _problems(unreadable, join)
        for failure in problems:
            held.log.warning(f"parquet member {failure.original_filename}: {failure.error}")
        assignments = [MetadataAssignment(name, m.source_member, m.values) for name, m in join.matched.items()]
        store_metadata(held, assignments, problems)
        return held.result(_metadata(parquet_names, tables, unreadable, join))


def _problems(unreadable: list[FileFailure], join: MetadataJoin) -> list[FileFailure]:
    """Unreadable or refused parquet members, and members with rows a duplicate meta_id
    displaced: the dead letter's open metadata rows. A duplicate is a warning: the file's
    other rows are stored."""
    warnings = [
        FileFailure(None, member, "metadata", text)
        for member, text in duplicate_reports(join.duplicate_meta_ids).items()
    ]
    refused = {f.original_filename for f in unreadable}
    return unreadable + [w for w in warnings if w.original_filename not in refused]


def _metadata(parquet_names: set[str], tables: list, unreadable: list[FileFailure], join) -> dict:
    return {
        "parquet_files": len(parquet_names),
        "unreadable_parquet_files": len(unreadable),
        "rows": sum(t.rows_read for _, t in tables),
        "rows_without_meta_id": sum(t.rows_without_meta_id for _, t in tables),
        "matched": len(join.matched),
        "rows_without_mp3": join.rows_without_mp3_count,
        "mp3s_without_row": len(join.mp3s_without_row),
        "duplicate_meta_ids": len(join.duplicate_meta_ids),
        "ambiguous_stems": len(join.ambiguous_stems),
        "problems": dg.MetadataValue.md(_problems_markdown(join, unreadable)),
    }


def read_parquet_members(
    local: Path, wanted: set[str], stems: set[str], workdir: Path, config: MetadataConfig
) -> list[tuple[str, MetadataTable | MetadataFileError]]:
    """Each wanted parquet member, copied out of the tar one at a time and streamed within the
    caps: the caps of each file and one budget for them all (max_metadata_archive_mb). Only
    rows whose meta_id is one of `stems` (the MP3s') are kept; the rest are counted."""
    budget = ArchiveMetadataBudget(config.max_metadata_archive_mb * MIB)
    tables: list[tuple[str, MetadataTable | MetadataFileError]] = []
    for entry in iter_archive(local, config.limits):
        if entry.name not in wanted or entry.rejection is not None:
            continue
        path = workdir / "member.parquet"
        entry.copy_to(path)
        try:
            tables.append((entry.name, read_metadata_table(path, config.metadata_limits, wanted=stems, budget=budget)))
        except MetadataFileError as exc:
            tables.append((entry.name, exc))
        finally:
            path.unlink(missing_ok=True)
    return sorted(tables, key=lambda pair: pair[0])


def _problems_markdown(join, unreadable: list[FileFailure]) -> str:
    lines = [f"- unreadable `{f.original_filename}`: {f.error}" for f in unreadable]
    lines += [f"- row with no MP3: meta_id `{meta_id}` in `{src}`" for src, meta_id in join.rows_without_mp3[:20]]
    lines += [f"- MP3 with no row: `{name}`" for name in join.mp3s_without_row[:20]]
    lines += [
        f"- duplicate meta_id `{d.meta_id}`: kept row {d.kept_row} of `{d.kept_member}`, "
        f"ignored row {d.ignored_row} of `{d.ignored_member}`"
        for d in join.duplicate_meta_ids[:20]
    ]
    lines += [f"- ambiguous stem `{stem}` (several MP3s share it)" for stem in join.ambiguous_stems[:20]]
    return "\n".join(lines) or "none"
