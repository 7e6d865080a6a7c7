"""Which archive a run is about: object keys, partitions, and the one version a run reads.

An archive is an object `archives/{name}.tar`, `.tar.gz` or `.tgz`. Each object gets a Dagster
partition of its own, named once when the sensor first sees it and kept in the `archives`
table, so two objects (`b.tar`, `b.tar.gz`) can never share one. A run reads exactly one
version of its archive: an ArchiveVersion, resolved once by raw_archive and handed to every
later step inside the manifest, so no step re-derives it or renames it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime

import dagster as dg

archives_partitions = dg.DynamicPartitionsDefinition(name="archives")

ARCHIVE_PREFIX = "archives/"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")  # longest first: ".tar.gz" before ".tar"

# Run tags the sensor sets: the exact object version a run is for. Backfills and the CLI carry
# only dagster/partition; the partition's archive is then looked up in the `archives` table.
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
        and archive_stem(key) != ""
    )


def archive_stem(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def preferred_partition_key(archive_key: str) -> str:
    """The batch id when it is already a clean partition key; otherwise a cleaned id plus a
    short hash of the object key, so that cleaning can never merge two names."""
    stem = archive_stem(archive_key)
    cleaned = _UNSAFE_PARTITION_CHARS.sub("_", stem).strip("._-")[:_MAX_PARTITION_STEM]
    if cleaned == stem:
        return stem
    return disambiguated_partition_key(archive_key)


def disambiguated_partition_key(archive_key: str) -> str:
    """For an object whose preferred key another object already holds (b.tar after b.tar.gz)."""
    stem = archive_stem(archive_key)
    cleaned = _UNSAFE_PARTITION_CHARS.sub("_", stem).strip("._-")[:_MAX_PARTITION_STEM]
    digest = hashlib.sha1(archive_key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned or 'archive'}-{digest}"


@dataclass(frozen=True)
class ArchiveVersion:
    """One version of one archive object: what a run reads and what every row it writes
    belongs to. `etag` tells versions apart; `last_modified` orders them."""

    key: str
    etag: str
    size: int
    last_modified: datetime
    partition_key: str

    @property
    def date(self) -> str:
        """YYYY-MM-DD of LastModified (UTC): the processed/{date}/ folder of its Opus files."""
        return self.last_modified.date().isoformat()

    def __str__(self) -> str:
        return f"{self.key}@{self.etag}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "key": self.key,
                "etag": self.etag,
                "size": self.size,
                "last_modified": self.last_modified.isoformat(),
                "partition_key": self.partition_key,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "ArchiveVersion":
        data = json.loads(text)
        return cls(
            key=data["key"],
            etag=data["etag"],
            size=int(data["size"]),
            last_modified=datetime.fromisoformat(data["last_modified"]),
            partition_key=data["partition_key"],
        )
