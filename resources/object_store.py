"""The object store resource: archives in, Opus files and manifests out.

Works with any S3-compatible service (AWS, SeaweedFS, MinIO, Ceph). Transfers of big
files are multipart, retried with backoff, and verified by size afterwards, so an asset
never records an object that is missing or truncated.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, TypeVar

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
import dagster as dg
from boto3.s3.transfer import TransferConfig

log = logging.getLogger(__name__)

MIB = 1024 * 1024
T = TypeVar("T")

# Error codes S3 services use for "try again", whatever the HTTP status.
_RETRYABLE_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "ServiceUnavailable",
        "PreconditionFailed",  # the object changed during a ranged download
    }
)


class ObjectInfo(NamedTuple):
    key: str
    etag: str
    size: int
    last_modified: datetime


class ObjectNotFoundError(LookupError):
    """The key does not exist in the bucket."""


class IncompleteTransferError(RuntimeError):
    """A transfer finished but the object or file is not what was sent; worth retrying."""


class RetriesExhaustedError(RuntimeError):
    """An operation kept failing with transient errors until it ran out of attempts."""


def retry_with_backoff(
    fn: Callable[[], T],
    attempts: int,
    base_s: float,
    is_transient: Callable[[BaseException], bool],
    *,
    max_backoff_s: float = 30.0,
    description: str = "operation",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn` until it succeeds, up to `attempts` times.

    Between attempts it sleeps a random time in [0, min(max_backoff_s, base_s * 2**n)]
    ("full jitter"), so many workers retrying against one recovering server spread out
    instead of hitting it in waves. Errors that `is_transient` rejects propagate at
    once; after the last attempt a RetriesExhaustedError chains the last error.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as error:
            if not is_transient(error):
                raise
            if attempt == attempts:
                raise RetriesExhaustedError(
                    f"{description} failed after {attempts} attempts; last error: "
                    f"{type(error).__name__}: {error}"
                ) from error
            delay = random.uniform(0, min(max_backoff_s, base_s * 2 ** (attempt - 1)))
            log.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.2f s",
                description, attempt, attempts, error, delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")


def is_transient_s3_error(error: BaseException) -> bool:
    """True for errors a later attempt may not hit: lost connections, timeouts,
    5xx and throttling. False for 4xx such as AccessDenied or NoSuchBucket."""
    if isinstance(error, IncompleteTransferError):
        return True
    if isinstance(
        error,
        (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.IncompleteReadError,
        ),
    ):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or code in _RETRYABLE_CODES
    if isinstance(error, (boto3.exceptions.S3UploadFailedError, boto3.exceptions.RetriesExceededError)):
        # boto3 wraps the cause; judge by it. With none, it was a transfer failure.
        cause = error.__cause__ or error.__context__ or getattr(error, "last_exception", None)
        return cause is None or is_transient_s3_error(cause)
    return False


@functools.lru_cache(maxsize=32)
def _cached_client(
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str,
    max_attempts: int,
    pid: int,
):
    """One boto3 client per configuration and process.

    Building a client costs tens of milliseconds; clients are thread-safe, so every
    step in a process shares one. `pid` is in the key so a forked worker builds its
    own instead of reusing its parent's connection pool.
    """
    del pid
    non_aws = endpoint_url is not None and "amazonaws.com" not in endpoint_url
    options: dict = {
        "retries": {"mode": "standard", "max_attempts": max_attempts},
        "signature_version": "s3v4",
    }
    if non_aws:
        # Virtual-host addressing needs DNS per bucket, which local servers lack.
        # botocore >= 1.36 adds CRC checksums to every request by default; several
        # S3-compatible servers reject or mishandle them, so send them only when
        # the operation requires one.
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=botocore.config.Config(**options),
    )


def _is_not_found(error: botocore.exceptions.ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class ObjectStore(dg.ConfigurableResource):
    """S3-compatible object store (AWS, SeaweedFS, MinIO, Ceph)."""

    endpoint_url: str | None = None
    bucket: str
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    max_attempts: int = 6
    multipart_threshold_mb: int = 16
    multipart_chunk_mb: int = 16
    upload_attempts: int = 5
    backoff_base_s: float = 0.5

    def client(self):
        """The shared boto3 S3 client for this configuration (see _cached_client)."""
        return _cached_client(
            self.endpoint_url,
            self.access_key,
            self.secret_key,
            self.region,
            self.max_attempts,
            os.getpid(),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist; safe to call from many processes."""
        client = self.client()
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as error:
            if not _is_not_found(error):
                raise
        kwargs: dict = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(**kwargs)
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    def iter_objects(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under `prefix` in key order, following pagination."""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(**kwargs):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    etag=item["ETag"].strip('"'),
                    size=item["Size"],
                    last_modified=item["LastModified"],
                )

    def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or None when it does not exist."""
        try:
            response = self.client().head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            if _is_not_found(error):
                return None
            raise
        return ObjectInfo(
            key=key,
            etag=response["ETag"].strip('"'),
            size=response["ContentLength"],
            last_modified=response["LastModified"],
        )

    def download_file(self, key: str, path: Path) -> ObjectInfo:
        """Download `key` to `path` (multipart for big objects), all or nothing.

        The bytes land in `path` only if their count matches the object's size and
        the object's ETag did not change while it was read.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")

        def attempt() -> ObjectInfo:
            before = self.head(key)
            if before is None:
                raise ObjectNotFoundError(f"s3://{self.bucket}/{key} does not exist")
            self.client().download_file(
                self.bucket, key, str(partial), Config=self._transfer_config()
            )
            received = partial.stat().st_size
            if received != before.size:
                raise IncompleteTransferError(
                    f"downloaded {received} bytes of s3://{self.bucket}/{key}, expected {before.size}"
                )
            after = self.head(key)
            if after is None or after.etag != before.etag:
                raise IncompleteTransferError(
                    f"s3://{self.bucket}/{key} changed while it was downloaded"
                )
            os.replace(partial, path)
            return before

        try:
            return self._retry(attempt, f"download of s3://{self.bucket}/{key} to {path}")
        finally:
            partial.unlink(missing_ok=True)

    def upload_file(self, path: Path, key: str, *, content_type: str | None = None) -> ObjectInfo:
        """Upload `path` to `key` (multipart for big files), retried and verified."""
        path = Path(path)
        expected_size = path.stat().st_size
        if expected_size < self.multipart_threshold_mb * MIB:
            return self.put_bytes(key, path.read_bytes(), content_type=content_type)
        extra_args = {"ContentType": content_type} if content_type else None

        def attempt() -> ObjectInfo:
            self.client().upload_file(
                str(path), self.bucket, key, ExtraArgs=extra_args, Config=self._transfer_config()
            )
            stored = self.head(key)
            if stored is None or stored.size != expected_size:
                found = "nothing" if stored is None else f"{stored.size} bytes"
                raise IncompleteTransferError(
                    f"after uploading {expected_size} bytes, s3://{self.bucket}/{key} holds {found}"
                )
            return stored

        return self._retry(attempt, f"upload of {path} to s3://{self.bucket}/{key}")

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Store small `data` under `key` in one request, retried.

        Content-MD5 makes the server reject a body damaged in transit, so no HEAD is needed
        afterwards: one request per object matters when thousands of clips are uploaded.
        """
        digest = hashlib.md5(data)
        kwargs = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentMD5": base64.b64encode(digest.digest()).decode(),
        }
        if content_type:
            kwargs["ContentType"] = content_type

        def attempt() -> ObjectInfo:
            response = self.client().put_object(**kwargs)
            server_date = response["ResponseMetadata"]["HTTPHeaders"].get("date")
            return ObjectInfo(
                key=key,
                etag=response["ETag"].strip('"'),
                size=len(data),
                last_modified=(
                    email.utils.parsedate_to_datetime(server_date) if server_date else datetime.now(timezone.utc)
                ),
            )

        return self._retry(attempt, f"upload of {len(data)} bytes to s3://{self.bucket}/{key}")

    def get_bytes(self, key: str) -> bytes:
        """The whole object; for small objects (manifests, JSON)."""
        try:
            response = self.client().get_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFoundError(f"s3://{self.bucket}/{key} does not exist") from error
            raise
        return response["Body"].read()

    def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing key is not an error."""
        self.client().delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many were deleted."""
        if not prefix:
            # An empty prefix would empty the whole bucket; make that impossible by typo.
            raise ValueError("delete_prefix needs a non-empty prefix")
        client = self.client()
        deleted = 0
        batch: list[dict] = []
        for info in self.iter_objects(prefix):
            batch.append({"Key": info.key})
            if len(batch) == 1000:  # DeleteObjects takes at most 1000 keys
                deleted += self._delete_batch(client, batch)
                batch = []
        if batch:
            deleted += self._delete_batch(client, batch)
        return deleted

    def _delete_batch(self, client, batch: list[dict]) -> int:
        response = client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise RuntimeError(
                f"could not delete {len(errors)} objects from s3://{self.bucket}, "
                f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
        return len(batch)

    def _transfer_config(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=self.multipart_threshold_mb * MIB,
            multipart_chunksize=self.multipart_chunk_mb * MIB,
        )

    def _retry(self, fn: Callable[[], T], description: str) -> T:
        # Downloads share the upload settings: same servers, same failure modes.
        return retry_with_backoff(
            fn,
            attempts=self.upload_attempts,
            base_s=self.backoff_base_s,
            is_transient=is_transient_s3_error,
            description=description,
        )
