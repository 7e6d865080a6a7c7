"""One dynamic partition per archive object: archives/{batch_id}.tar[.gz|.tgz] -> batch_id."""

from __future__ import annotations

import hashlib
import re

import dagster as dg

archives_partitions = dg.DynamicPartitionsDefinition(name="archives")

ARCHIVE_PREFIX = "archives/"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")  # longest first: ".tar.gz" before ".tar"

# Run tags that carry the exact object a run is for; backfills from the UI lack them and
# fall back to resolving the partition key against the bucket.
ARCHIVE_KEY_TAG = "audio/archive_key"
ARCHIVE_ETAG_TAG = "audio/archive_etag"

_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]+")


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


def partition_key_for(archive_key: str) -> str:
    """The batch id when it is already a clean key; otherwise a cleaned id plus a short hash
    of the object key, so two different names can never collapse into one partition."""
    stem = archive_stem(archive_key)
    cleaned = _SAFE_KEY.sub("_", stem).strip("._-")[:120]
    if cleaned == stem:
        return stem
    digest = hashlib.sha1(archive_key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned or 'archive'}-{digest}"


def candidate_archive_keys(partition_key: str) -> list[str]:
    """Object keys that map to a clean partition key, in the order to try them."""
    return [f"{ARCHIVE_PREFIX}{partition_key}{suffix}" for suffix in (".tar.gz", ".tgz", ".tar")]
