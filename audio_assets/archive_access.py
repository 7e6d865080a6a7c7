"""Find, download and scan the archive of a partition: the part every archive step shares.

Each step downloads the archive into its own scratch directory instead of relying on files
left by an earlier step, so steps can run on different hosts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd

from audio_assets.audio.tar_safety import ArchiveListing, ArchiveUnreadable, scan_archive
from audio_assets.partitions import (
    ARCHIVE_ETAG_TAG,
    ARCHIVE_KEY_TAG,
    ARCHIVE_PREFIX,
    candidate_archive_keys,
    is_archive_key,
    partition_key_for,
)
from resources.object_store import ObjectInfo, ObjectStore
from resources.results_db import ResultsDatabase


@dataclass(frozen=True)
class ArchiveRef:
    """The archive object a manifest was made from; later steps must read the same version."""

    key: str
    etag: str
    date: str  # YYYY-MM-DD of LastModified: the processed/{date}/ folder

    @classmethod
    def from_manifest(cls, manifest: pd.DataFrame) -> "ArchiveRef":
        return cls(
            key=str(manifest["archive_key"].iloc[0]),
            etag=str(manifest["archive_etag"].iloc[0]),
            date=str(manifest["archive_date"].iloc[0]),
        )


def resolve_archive(context: dg.AssetExecutionContext, object_store: ObjectStore) -> ObjectInfo:
    """The object behind this run's partition: the sensor's tag first, else by name."""
    partition_key = context.partition_key
    tagged = context.run.tags.get(ARCHIVE_KEY_TAG)
    candidates = [tagged] if tagged and partition_key_for(tagged) == partition_key else []
    candidates += candidate_archive_keys(partition_key)
    for key in candidates:
        info = object_store.head(key)
        if info is not None:
            return info
    # Names that needed cleaning (spaces, unicode, upper-case suffix) only map one way.
    matches = [
        info
        for info in object_store.iter_objects(ARCHIVE_PREFIX)
        if is_archive_key(info.key) and partition_key_for(info.key) == partition_key
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise dg.Failure(f"no archive object for partition {partition_key!r} under {ARCHIVE_PREFIX}", allow_retries=False)
    raise dg.Failure(
        f"partition {partition_key!r} is ambiguous: {[m.key for m in matches]}; rename one archive",
        allow_retries=False,
    )


def expected_etag(context: dg.AssetExecutionContext) -> str | None:
    return context.run.tags.get(ARCHIVE_ETAG_TAG)


def download_and_scan(
    context: dg.AssetExecutionContext,
    *,
    object_store: ObjectStore,
    results_db: ResultsDatabase,
    archive_key: str,
    workdir: Path,
    max_member_bytes: int,
    stage: str,
    required_etag: str | None = None,
    extract_kinds: frozenset[str] = frozenset(),
) -> tuple[ObjectInfo, ArchiveListing, float]:
    """Download into workdir and scan (extracting `extract_kinds`); returns the object info,
    the listing and the download seconds. An unreadable archive is recorded in
    processing_failures and fails the step without retries: retrying cannot fix the bytes."""
    local = workdir / "archive.tar"
    started = time.monotonic()
    info = object_store.download_file(archive_key, local)
    download_s = time.monotonic() - started
    if required_etag and info.etag != required_etag:
        raise dg.Failure(
            f"{archive_key} changed during the run (ETag {required_etag} -> {info.etag}); "
            "the sensor has requested a run for the new version",
            allow_retries=False,
        )
    try:
        listing = scan_archive(
            local,
            max_member_bytes=max_member_bytes,
            extract_to=workdir / "members" if extract_kinds else None,
            extract_kinds=extract_kinds,
        )
    except ArchiveUnreadable as exc:
        reason = f"archive unreadable: {exc}"
        results_db.record_archive_failure(
            archive_source=archive_key,
            partition_key=context.partition_key,
            stage=stage,
            error=reason,
            run_id=context.run.run_id,
        )
        raise dg.Failure(reason, metadata={"archive_key": archive_key}, allow_retries=False) from exc
    finally:
        local.unlink(missing_ok=True)  # the members are extracted; the tar itself is not needed
    return info, listing, download_s
