"""Find, download and read the archive of a run: the part every archive step shares.

raw_archive resolves the run's ArchiveVersion once (`resolve_version`); later steps get it
with the manifest and only download that exact version again (`download`), so steps can run
on different hosts without ever mixing two versions of an archive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from audio_assets.archive_identity import (
    ARCHIVE_ETAG_TAG,
    ARCHIVE_KEY_TAG,
    ARCHIVE_PREFIX,
    ARCHIVE_SUFFIXES,
    ArchiveVersion,
    is_archive_key,
    preferred_partition_key,
)
from audio_assets.audio.tar_safety import ArchiveRefused, ArchiveUnreadable
from resources.object_store import ObjectStore
from resources.results_db import ResultsDatabase
from resources.scratch import ScratchSpace

# Room left beside the archive; steps that extract members check for their own space as
# they go, one member at a time.
_DOWNLOAD_HEADROOM_BYTES = 1024 * 1024


def resolve_version(context: dg.AssetExecutionContext, object_store: ObjectStore, results_db: ResultsDatabase) -> ArchiveVersion:
    """The archive version this run is for: the one the sensor tagged, else the partition's
    object as it is now (a backfill, the CLI)."""
    partition_key = context.partition_key
    key = context.run.tags.get(ARCHIVE_KEY_TAG) or _key_of_partition(partition_key, object_store, results_db)
    info = object_store.head(key)
    if info is None:
        raise dg.Failure(f"{key} (partition {partition_key}) is no longer in the bucket", allow_retries=False)
    tagged_etag = context.run.tags.get(ARCHIVE_ETAG_TAG)
    if tagged_etag and info.etag != tagged_etag:
        raise dg.Failure(
            f"{key} was overwritten after this run was requested (ETag {tagged_etag} -> {info.etag}); "
            "the sensor requests a run for the new version",
            allow_retries=False,
        )
    return ArchiveVersion(key, info.etag, info.size, info.last_modified, partition_key)


def _key_of_partition(partition_key: str, object_store: ObjectStore, results_db: ResultsDatabase) -> str:
    registered = results_db.archives.key_of_partition(partition_key)
    if registered is not None:
        return registered
    # A partition added before the registry existed: its name says which object it was.
    matches = [
        key for key in (f"{ARCHIVE_PREFIX}{partition_key}{suffix}" for suffix in ARCHIVE_SUFFIXES)
        if object_store.head(key) is not None
    ] or [
        info.key for info in object_store.iter_objects(ARCHIVE_PREFIX)
        if is_archive_key(info.key) and preferred_partition_key(info.key) == partition_key
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise dg.Failure(f"no archive object for partition {partition_key!r} under {ARCHIVE_PREFIX}", allow_retries=False)
    raise dg.Failure(f"partition {partition_key!r} is ambiguous: {matches}", allow_retries=False)


def download(object_store: ObjectStore, archive: ArchiveVersion, workdir: Path) -> Path:
    """The exact version `archive` in workdir; a Failure if the object changed since."""
    ScratchSpace.ensure_free(workdir, archive.size + _DOWNLOAD_HEADROOM_BYTES, f"downloading {archive.key}")
    local = workdir / "archive.tar"
    info = object_store.download_file(archive.key, local)
    if info.etag != archive.etag:
        local.unlink(missing_ok=True)
        raise dg.Failure(
            f"{archive.key} changed during the run (ETag {archive.etag} -> {info.etag}); "
            "the sensor requests a run for the new version",
            allow_retries=False,
        )
    return local


@contextmanager
def unreadable_archive_recorded(
    context: dg.AssetExecutionContext, results_db: ResultsDatabase, archive: ArchiveVersion, stage: str
) -> Iterator[None]:
    """An archive that cannot be read (damaged, or refused over a cap) is recorded in the dead
    letter and fails the step without retries: retrying cannot fix the bytes."""
    try:
        yield
    except ArchiveUnreadable as exc:
        reason = f"archive {'refused' if isinstance(exc, ArchiveRefused) else 'unreadable'}: {exc}"
        results_db.failures.record_archive_failure(
            archive.key, archive.partition_key, stage=stage, error=reason, run_id=context.run.run_id
        )
        raise dg.Failure(reason, metadata={"archive": str(archive)}, allow_retries=False) from exc
