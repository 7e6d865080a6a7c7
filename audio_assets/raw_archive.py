"""raw_archive: the run's archive version, scanned safely, its members registered as rows."""

import dagster as dg
import pandas as pd

from audio_assets.archive_job import archive_asset
from audio_assets.settings import ArchiveScanConfig
from media.tar_safety import ArchiveListing, scan_archive
from resources.archive_run import ArchiveRun, HeldArchive
from resources.manifest_io import ArchiveTable
from resources.results_db.failures import FileFailure
from resources.results_db.raw_archive import RegisteredMembers, Rejection, register_members

MANIFEST_COLUMNS = ["member", "kind", "size", "sha256", "accepted", "reason", "audio_file_id"]


@archive_asset(kinds={"s3", "postgres"})
def raw_archive(
    context: dg.AssetExecutionContext, config: ArchiveScanConfig, archive_run: ArchiveRun
) -> dg.Output[ArchiveTable]:
    """The archive's members, checked for unsafe entries, with one audio_files row per MP3."""
    with archive_run.step(context) as held:
        listing = scan_archive(held.local_copy(), config.limits)
        if not listing.mp3s and not listing.rejected_mp3s:
            held.fail("archive has no MP3 members")
        registered = register(held, listing)
        deleted = held.drain()
        return held.output(
            build_manifest(listing, registered.ids),
            {
                "archive_key": held.archive.key,
                "archive_etag": held.archive.etag,
                "archive_mb": round(held.archive.size / 1e6, 3),
                "mp3_members": len(listing.mp3s),
                "parquet_members": len(listing.parquets),
                "other_members": len(listing.others),
                "rejected_members": len(listing.rejected),
                "restarted_files": len(registered.restarted),
                "removed_files": len(registered.removed),
                "objects_deleted": deleted,
                "rejected": dg.MetadataValue.md(_rejected_markdown(listing)),
            },
        )


def register(held: HeldArchive, listing: ArchiveListing) -> RegisteredMembers:
    """A row per MP3 member (accepted or rejected); rejected members that get no row of
    their own (parquets, other files, a duplicate of a name already taken) go to the dead
    letter only."""
    accepted = {m.name: (m.size, m.sha256) for m in listing.mp3s}
    rejected_rows: dict[str, Rejection] = {}
    other_failures = []
    for rejected in listing.rejected:
        if rejected.kind == "mp3" and rejected.name not in accepted and rejected.name not in rejected_rows:
            rejected_rows[rejected.name] = Rejection(rejected.reason, rejected.sha256)
        else:
            other_failures.append(FileFailure(None, rejected.name, "archive", rejected.reason))
    return register_members(held, accepted=accepted, rejected=rejected_rows, other_failures=other_failures)


def build_manifest(listing: ArchiveListing, file_ids: dict[str, int]) -> pd.DataFrame:
    accepted_mp3s = {m.name for m in listing.mp3s}

    def row_of(name: str, kind: str, rejected: bool) -> int | None:
        # A rejected duplicate of an accepted MP3 shares its name but not its row.
        return file_ids.get(name) if kind == "mp3" and not (rejected and name in accepted_mp3s) else None

    rows = [(m.name, m.kind, m.size, m.sha256, True, None, row_of(m.name, m.kind, False)) for m in listing.members] + [
        (r.name, r.kind, None, None, False, r.reason, row_of(r.name, r.kind, True)) for r in listing.rejected
    ]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest["size"] = manifest["size"].astype("Int64")
    manifest["audio_file_id"] = manifest["audio_file_id"].astype("Int64")
    return manifest


def _rejected_markdown(listing: ArchiveListing) -> str:
    if not listing.rejected:
        return "none"
    lines = ["| member | reason |", "|---|---|"]
    lines += [f"| `{r.name}` | {r.reason} |" for r in listing.rejected[:50]]
    if len(listing.rejected) > 50:
        lines.append(f"| … | {len(listing.rejected) - 50} more |")
    return "\n".join(lines)
