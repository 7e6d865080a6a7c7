"""Which archive a thing is about: the one identity the sensor, the registry, the steps, the
dead letter, the CLI and the console share. Pure: no Dagster, no database, no S3 client.

Words (README "Glossary"):
- archive key: the object key `archives/{batch id}.tar`, `.tar.gz` or `.tgz`. In SQL it is the
  column `archive_source`; in code it is always `archive_key` (or `archive.key`).
- partition key: the archive's Dagster partition in DynamicPartitions "archives", named once by
  the registry (table `archives`) when the sensor first sees the key: the batch id, unless
  another object already holds it or the id needs cleaning (`partition_key_candidates`).
- ETag: the version of the object. A run reads exactly one ArchiveVersion, made from the
  sensor's listing (its run tags) or, for a backfill, from the registry and a HEAD.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

ARCHIVE_PREFIX = "archives/"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")  # longest first: ".tar.gz" before ".tar"
ARCHIVES_PARTITIONS = "archives"  # the DynamicPartitionsDefinition's name

# Run tags: the exact object version a run is for. The sensor, requeue and the catch-up
# schedule set them; a backfill carries only dagster/partition and the version is resolved
# from the registry.
ARCHIVE_KEY_TAG = "audio/archive_key"
ARCHIVE_ETAG_TAG = "audio/archive_etag"
PARTITION_TAG = "dagster/partition"

_UNSAFE_PARTITION_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_PARTITION_STEM = 120


def is_archive_key(key: str) -> bool:
    return (
        key.startswith(ARCHIVE_PREFIX)
        and "/" not in key[len(ARCHIVE_PREFIX) :]
        and key.lower().endswith(ARCHIVE_SUFFIXES)
        and batch_id(key) != ""
    )


def batch_id(archive_key: str) -> str:
    """The file name without .tar/.tar.gz/.tgz: `archives/b.tar.gz` -> `b`."""
    name = archive_key.rsplit("/", 1)[-1]
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def partition_key_candidates(archive_key: str) -> tuple[str, str]:
    """The key↔partition rule: (preferred, fallback) partition keys for a new archive key.

    Preferred: the batch id when it is already a clean partition key, else the cleaned id plus
    a short hash of the object key, so cleaning can never merge two names. Fallback, for an
    object whose preferred key another object already holds (b.tar after b.tar.gz): always
    the cleaned id plus the hash."""
    stem = batch_id(archive_key)
    cleaned = _UNSAFE_PARTITION_CHARS.sub("_", stem).strip("._-")[:_MAX_PARTITION_STEM]
    digest = hashlib.sha1(archive_key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    hashed = f"{cleaned or 'archive'}-{digest}"
    return (stem if cleaned == stem else hashed), hashed


def tagged_version(tags: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(archive key, ETag) a run's tags pin, or (None, None) for a run without them (a backfill)."""
    return tags.get(ARCHIVE_KEY_TAG), tags.get(ARCHIVE_ETAG_TAG)


@dataclass(frozen=True)
class ArchiveVersion:
    """One version of one archive object: what a run reads and what every row it writes
    belongs to. `etag` tells versions apart; `last_modified` orders them. `epoch`: the run's
    claim on the archive (table `archives`), set once raw_archive has claimed it; every write
    the run makes is fenced by version and epoch."""

    key: str
    etag: str
    size: int
    last_modified: datetime
    partition_key: str
    epoch: int | None = None

    @property
    def date(self) -> str:
        """YYYY-MM-DD of LastModified (UTC): the processed/{date}/ folder of its Opus files."""
        return self.last_modified.date().isoformat()

    def __str__(self) -> str:
        return f"{self.key}@{self.etag}"

    @classmethod
    def of(cls, listed, partition_key: str) -> ArchiveVersion:
        """The version of a listed or HEADed object (anything with key, etag, size and
        last_modified): what the sensor, catch-up, requeue and raw_archive each read."""
        return cls(listed.key, listed.etag, listed.size, listed.last_modified, partition_key)

    def run_tags(self) -> dict[str, str]:
        """The tags that pin a run to this version (see tagged_version)."""
        return {PARTITION_TAG: self.partition_key, ARCHIVE_KEY_TAG: self.key, ARCHIVE_ETAG_TAG: self.etag}

    def to_json(self) -> str:
        return json.dumps(
            {
                "key": self.key,
                "etag": self.etag,
                "size": self.size,
                "last_modified": self.last_modified.isoformat(),
                "partition_key": self.partition_key,
                "epoch": self.epoch,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ArchiveVersion:
        data = json.loads(text)
        return cls(
            key=data["key"],
            etag=data["etag"],
            size=int(data["size"]),
            last_modified=datetime.fromisoformat(data["last_modified"]),
            partition_key=data["partition_key"],
            epoch=data.get("epoch"),
        )
