"""The item's Opus file, streamed from the object store through the console.

Through the console rather than a presigned URL: the browser never learns the object store's
address (often internal), every byte needs a live session, and nothing in the bucket is ever
public. HTTP Range is passed on to S3, so seeking in the player fetches only what it plays.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import botocore.exceptions

from s3_client import s3_client

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$", re.ASCII)
_BEYOND_ANY_FILE = 10**18
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in HTTP

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class UnsatisfiableRange(ValueError):
    pass


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a `Range` header asks for, clipped to `size`; None for no header
    (or a multi-range one, which is answered with the whole file, as RFC 9110 allows)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first, last = (_position(x) for x in match.groups())
    if first is None and last is None:
        return None
    if first is None:  # suffix: the last N bytes
        assert last is not None  # the pattern has at least one of the two
        if last == 0:
            raise UnsatisfiableRange(header)
        return ByteRange(max(0, size - last), size - 1)
    end = min(last, size - 1) if last is not None else size - 1
    if first >= size or end < first:
        raise UnsatisfiableRange(header)
    return ByteRange(first, end)


def _position(digits: str) -> int | None:
    """A byte position; one of more than 18 digits is past any file (int() of thousands of
    digits is refused by Python, and would be no use anyway)."""
    if digits == "":
        return None
    return int(digits) if len(digits) <= 18 else _BEYOND_ANY_FILE


def s3_client_for(settings) -> object:
    """The S3 client of the pipeline's one factory (s3_client.py: same retries, timeouts and
    non-AWS settings as ObjectStore), without importing Dagster."""
    return s3_client(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)


class AudioSource:
    """Reads Opus objects from the bucket the pipeline writes to."""

    def __init__(self, client, bucket: str):
        self.client, self.bucket = client, bucket

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise

    def stream(self, key: str, byte_range: ByteRange | None) -> Iterator[bytes]:
        extra = {"Range": f"bytes={byte_range.start}-{byte_range.end}"} if byte_range else {}
        body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()
