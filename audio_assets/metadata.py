"""parquet_metadata: parquet rows joined to their MP3s by meta_id and stored as JSONB."""

from pathlib import Path

import dagster as dg

from archive_identity import ArchiveVersion
from audio_assets.archive_step import archive_asset, archive_step
from audio_assets.audio.metadata_rows import (
    MetadataFileError,
    MetadataJoin,
    MetadataTable,
    duplicate_reports,
    join_metadata,
    read_metadata_table,
)
from audio_assets.audio.tar_safety import iter_archive
from audio_assets.settings import MetadataConfig
from resources.archive_claim import ArchiveClaim
from resources.manifest_io import ArchiveTable
from resources.object_store import ObjectStore
from resources.results_db import FileFailure, MetadataAssignment, ResultsDatabase
from resources.scratch import ScratchSpace


@archive_asset(kinds={"parquet", "postgres"}, manifest=False)
def parquet_metadata(
    context: dg.AssetExecutionContext,
    config: MetadataConfig,
    raw_archive: ArchiveTable,
    object_store: ObjectStore,
    results_db: ResultsDatabase,
    scratch: ScratchSpace,
    archive_claim: ArchiveClaim,
) -> dg.MaterializeResult:
    """Each MP3's parquet row (meta_id = file stem) on audio_files.parquet_metadata."""
    manifest = raw_archive.rows
    with archive_step(
        context, ["metadata"], archive_claim, results_db, archive=raw_archive.archive, scratch=scratch
    ) as step:
        archive = step.archive  # with the run's claim epoch, which fences every write
        accepted = manifest[manifest["accepted"]]
        mp3_names = accepted.loc[accepted["kind"] == "mp3", "member"].tolist()
        parquet_names = set(accepted.loc[accepted["kind"] == "parquet", "member"])
        tables, unreadable = [], []
        if parquet_names:
            with scratch.step_dir(context.run.run_id, "parquet_metadata") as workdir:
                local = step.local_archive(object_store)
                for name, table in _read_parquet_members(local, parquet_names, workdir, config):
                    if isinstance(table, MetadataFileError):
                        unreadable.append(FileFailure(None, name, "metadata", str(table)))
                    else:
                        tables.append((name, table))
        join = join_metadata(mp3_names, tables)
        results_db.audio_files.store_metadata(
            archive, [MetadataAssignment(name, m.source_member, m.values) for name, m in join.matched.items()]
        )
        _record_problems(context, results_db, archive, unreadable, join)
        return step.result(_metadata(parquet_names, tables, unreadable, join))


def _record_problems(
    context, results_db: ResultsDatabase, archive: ArchiveVersion, unreadable: list[FileFailure], join: MetadataJoin
) -> None:
    """Unreadable or refused parquet members, and members with rows a duplicate meta_id
    displaced, as the dead letter's open metadata rows; rows of earlier runs that no longer
    apply are closed. A duplicate is a warning: the file's other rows are stored."""
    warnings = [
        FileFailure(None, member, "metadata", text)
        for member, text in duplicate_reports(join.duplicate_meta_ids).items()
    ]
    refused = {f.original_filename for f in unreadable}
    problems = unreadable + [w for w in warnings if w.original_filename not in refused]
    results_db.failures.replace_member_failures(archive, "metadata", problems, context.run.run_id)
    for failure in problems:
        context.log.warning(f"parquet member {failure.original_filename}: {failure.error}")


def _metadata(parquet_names: set[str], tables: list, unreadable: list[FileFailure], join) -> dict:
    return {
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


def _read_parquet_members(
    local: Path, wanted: set[str], workdir: Path, config: MetadataConfig
) -> list[tuple[str, MetadataTable | MetadataFileError]]:
    """Each wanted parquet member, copied out of the tar one at a time and read within the caps."""
    tables = []
    for entry in iter_archive(local, config.limits):
        if entry.name not in wanted or entry.rejection is not None:
            continue
        path = workdir / "member.parquet"
        entry.copy_to(path)
        try:
            tables.append((entry.name, read_metadata_table(path, config.metadata_limits)))
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
