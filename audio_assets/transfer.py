"""transfer_archive: one archive from the remote SFTP host into archives/ on the object store.

The run streams the remote file into a multipart upload (nothing is staged on local disk)
and hashes it on the way. The object becomes visible only when CompleteMultipartUpload
succeeds, and the reader refuses to deliver the last byte unless the SHA-256 of everything
read equals the remote file's; so an interrupted or corrupted transfer leaves no
archives/ object for archive_sensor to pick up, and s3transfer aborts the upload. Only a
verified object (size, SHA-256 in its metadata, ETag recomputed from the bytes sent) marks
the remote file transferred: moved to done_dir, and always recorded in remote_transfers.

It is an op job, not an asset: a transfer is an action on one remote file, keyed by a
name that is not yet a batch id, and the archives/ object it writes is already the input
that archive_sensor turns into a raw_archive partition. As an asset it would add a second
set of dynamic partitions that mirrors the first. In the UI each transfer is a run of
`transfer_archive` tagged with the remote file; its step shows the byte counts, hash and
throughput.
"""


import hashlib
import math
import posixpath
import time
from collections.abc import Iterable
from typing import IO

import botocore.exceptions
import dagster as dg
import paramiko
import psycopg2.extras
from boto3.s3.transfer import TransferConfig
from pydantic import Field

from audio_assets.partitions import ARCHIVE_PREFIX
from resources.object_store import MIB, ObjectStore
from resources.remote_host import (
    HostKeyRejected,
    InvalidRemoteName,
    RemoteArchiveHost,
    RemoteFile,
    RemoteHostNotConfigured,
    RemoteSession,
)
from resources.results_db import ResultsDatabase

REMOTE_FILE_TAG = "audio/remote_file"
SHA256_METADATA = "sha256"  # x-amz-meta-sha256 on every transferred archive
MTIME_METADATA = "source-mtime"  # the remote file's mtime, so a re-run can skip without hashing

S3_MAX_PARTS = 10_000
S3_MIN_PART = 5 * MIB
S3_MAX_PART = 5 * 1024 * MIB
_SOURCE_READ = 256 * 1024

TRANSFER_RETRY = dg.RetryPolicy(
    max_retries=4, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class RemoteArchiveConfig(dg.Config):
    name: str = Field(description="file name in the remote host's remote_dir, e.g. batch_2026_11_01.tar.gz")
    size: int | None = Field(default=None, description="size the sensor listed; the run refuses a file that changed")
    mtime: int | None = Field(default=None, description="mtime the sensor listed (epoch seconds)")
    verify_etag: bool = Field(
        default=True,
        description="compare the stored ETag with the MD5s of the parts sent; turn off for stores "
        "whose ETags are not MD5-based (AWS SSE-KMS)",
    )


class TransferVerificationError(RuntimeError):
    """The bytes read or stored are not the remote file's; a retry reads them again."""


class RemoteFileChanged(RuntimeError):
    """The remote file is not the version this run was asked to transfer."""


class VerifyingReader:
    """A forward-only file object over `source` that hashes what passes through it.

    It refuses to hand over the end of the stream (raises TransferVerificationError) when
    the byte count or SHA-256 differ from what is expected: the uploader then aborts
    before CompleteMultipartUpload, so a bad copy never becomes an object. Not seekable on
    purpose: s3transfer then reads it once, in order, from one thread.
    """

    def __init__(
        self,
        source: IO[bytes],
        *,
        expected_size: int,
        expected_sha256: str,
        part_size: int,
        multipart_threshold: int,
    ):
        self.source = source
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.part_size = part_size
        self.multipart = expected_size >= multipart_threshold  # s3transfer's own rule
        self.bytes_read = 0
        self._sha256 = hashlib.sha256()
        self._part_md5s: list[bytes] = []
        self._part = hashlib.md5()
        self._part_fill = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        data = self._read_fully(size)
        self._account(data)
        if self.bytes_read > self.expected_size:
            raise TransferVerificationError(
                f"remote file grew while it was read: {self.bytes_read} bytes, expected {self.expected_size}"
            )
        at_eof = not data and size != 0
        if self.bytes_read == self.expected_size or at_eof:
            self._verify()
        return data

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def expected_etag(self) -> str:
        """The ETag S3 computes for these bytes: MD5 of a single PUT, or MD5 of the parts'
        MD5s plus "-N" for a multipart upload."""
        digests = self._part_md5s + ([self._part.digest()] if self._part_fill else [])
        if not self.multipart:
            return digests[0].hex() if digests else hashlib.md5().hexdigest()
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"

    def _read_fully(self, size: int) -> bytes:
        if size is None or size < 0:
            return self.source.read()
        # Loop: a short read would end a part early, and S3 refuses parts under 5 MiB but
        # the last. Small reads: paramiko grows one bytes object per read(), which is
        # quadratic (a 16 MiB read ran at 15 MB/s, 256 KiB reads at over 100).
        chunks, wanted = [], size
        while wanted > 0:
            chunk = self.source.read(min(wanted, _SOURCE_READ))
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)

    def _account(self, data: bytes) -> None:
        self.bytes_read += len(data)
        self._sha256.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self._part_fill)
            self._part.update(view[:take])
            self._part_fill += take
            view = view[take:]
            if self._part_fill == self.part_size:
                self._part_md5s.append(self._part.digest())
                self._part, self._part_fill = hashlib.md5(), 0

    def _verify(self) -> None:
        if self._verified:
            return
        if self.bytes_read != self.expected_size:
            raise TransferVerificationError(
                f"remote file ended after {self.bytes_read} of {self.expected_size} bytes"
            )
        if self.sha256 != self.expected_sha256:
            raise TransferVerificationError(
                f"SHA-256 of the bytes read {self.sha256} differs from the remote file's {self.expected_sha256}"
            )
        self._verified = True


@dg.op(
    description="Streams one remote archive into archives/ (multipart, SHA-256 verified), then marks it transferred",
    pool="remote_transfer",
)
def transfer_remote_archive(
    context: dg.OpExecutionContext,
    config: RemoteArchiveConfig,
    remote_host: RemoteArchiveHost,
    object_store: ObjectStore,
    results_db: ResultsDatabase,
) -> dg.Output[None]:
    key = f"{ARCHIVE_PREFIX}{config.name}"
    started = time.monotonic()
    try:
        with remote_host.session() as session:
            remote = _locate(session, config)
            stored, uploaded = _ensure_uploaded(context, session, object_store, key, remote, config)
            _check_unchanged(session, remote)
            moved_to = session.mark_transferred(remote) if remote_host.done_dir else None
    except (RemoteHostNotConfigured, HostKeyRejected, paramiko.AuthenticationException,
            PermissionError, InvalidRemoteName, RemoteFileChanged) as error:
        # Retrying cannot fix configuration, trust, permissions or a file that is gone or replaced.
        raise dg.Failure(str(error), allow_retries=False) from error
    record_transfer(
        results_db, remote_host, remote, stored, moved_to=moved_to, run_id=context.run.run_id
    )
    elapsed = time.monotonic() - started
    context.log.info(
        f"{remote.path} -> s3://{object_store.bucket}/{key}: "
        + (f"uploaded {remote.size} bytes in {elapsed:.1f} s" if uploaded else "already there, not uploaded")
    )
    return dg.Output(
        None,
        metadata={
            "remote_host": remote_host.address,
            "remote_path": remote.path,
            "object": f"s3://{object_store.bucket}/{key}",
            "size_mb": round(remote.size / 1e6, 3),
            "sha256": stored["sha256"],
            "etag": stored["etag"],
            "uploaded": uploaded,
            "seconds": round(elapsed, 2),
            "mb_per_s": round(remote.size / 1e6 / max(elapsed, 1e-6), 1) if uploaded else 0.0,
            "marked": moved_to or "recorded in remote_transfers",
        },
    )


def build_transfer_job(retry_policy: dg.RetryPolicy | None = TRANSFER_RETRY) -> dg.JobDefinition:
    """The transfer job; tests build one without back-off delays."""

    @dg.job(
        name="transfer_archive",
        description="Copies one archive from the remote SFTP host to archives/ and marks it transferred",
        op_retry_policy=retry_policy,
    )
    def transfer_archive():
        transfer_remote_archive()

    return transfer_archive


transfer_archive = build_transfer_job()


def transfer_run_config(remote: RemoteFile) -> dict:
    return {
        "ops": {
            "transfer_remote_archive": {
                "config": {"name": remote.name, "size": remote.size, "mtime": remote.mtime}
            }
        }
    }


# --- steps -----------------------------------------------------------------------------------


def _locate(session: RemoteSession, config: RemoteArchiveConfig) -> RemoteFile:
    remote = session.stat(config.name)
    if remote is None:
        raise RemoteFileChanged(f"{config.name} is in neither remote_dir nor done_dir")
    if (config.size is not None and remote.size != config.size) or (
        config.mtime is not None and remote.mtime != config.mtime
    ):
        raise RemoteFileChanged(
            f"{remote.path} changed since it was listed (size {config.size} -> {remote.size}, "
            f"mtime {config.mtime} -> {remote.mtime}); the sensor requests the new version"
        )
    return remote


def _ensure_uploaded(
    context: dg.OpExecutionContext,
    session: RemoteSession,
    object_store: ObjectStore,
    key: str,
    remote: RemoteFile,
    config: RemoteArchiveConfig,
) -> tuple[dict, bool]:
    """The verified object for `remote`, uploading it only if it is not there yet."""
    existing = head_with_metadata(object_store, key)
    if _same_version(existing, remote):
        return existing, False
    remote_sha256 = session.sha256(remote)
    if existing and existing["size"] == remote.size and existing["sha256"] == remote_sha256:
        return existing, False  # same bytes under a new mtime (copied again): nothing to send
    abort_unfinished_uploads(object_store, key, context)
    reader = _upload(session, object_store, key, remote, remote_sha256)
    stored = head_with_metadata(object_store, key)
    problem = _verification_problem(stored, remote, remote_sha256, reader, config.verify_etag)
    if problem:
        object_store.delete(key)
        raise TransferVerificationError(f"s3://{object_store.bucket}/{key}: {problem}; deleted it")
    return stored, True


def _same_version(existing: dict | None, remote: RemoteFile) -> bool:
    return bool(
        existing
        and existing["sha256"]
        and existing["size"] == remote.size
        and existing["mtime"] == str(remote.mtime)
    )


def _upload(
    session: RemoteSession, object_store: ObjectStore, key: str, remote: RemoteFile, sha256: str
) -> VerifyingReader:
    threshold = max(object_store.multipart_threshold_mb * MIB, S3_MIN_PART)
    part_size = part_size_for(remote.size, object_store.multipart_chunk_mb * MIB)
    transfer_config = TransferConfig(
        multipart_threshold=threshold, multipart_chunksize=part_size, max_concurrency=4
    )
    # Parts wait in memory for an upload slot; this caps a transfer at ~6 parts of RAM.
    transfer_config.max_in_memory_upload_chunks = 6
    with session.open(remote) as handle:
        reader = VerifyingReader(
            handle,
            expected_size=remote.size,
            expected_sha256=sha256,
            part_size=part_size,
            multipart_threshold=threshold,
        )
        object_store.client().upload_fileobj(
            reader,
            object_store.bucket,
            key,
            ExtraArgs={"Metadata": {SHA256_METADATA: sha256, MTIME_METADATA: str(remote.mtime)}},
            Config=transfer_config,
        )
    return reader


def _verification_problem(
    stored: dict | None, remote: RemoteFile, sha256: str, reader: VerifyingReader, verify_etag: bool
) -> str | None:
    if stored is None:
        return "missing after the upload completed"
    if stored["size"] != remote.size:
        return f"holds {stored['size']} bytes, the remote file {remote.size}"
    if stored["sha256"] != sha256:
        return f"metadata sha256 {stored['sha256']!r} differs from the remote file's {sha256}"
    if verify_etag and stored["etag"] != reader.expected_etag:
        return f"ETag {stored['etag']} differs from {reader.expected_etag} computed from the bytes sent"
    return None


def _check_unchanged(session: RemoteSession, remote: RemoteFile) -> None:
    """A file still being written must not be moved or recorded as done."""
    now = session.stat(remote.name)
    if now is None or (now.size, now.mtime) != (remote.size, remote.mtime):
        raise RemoteFileChanged(
            f"{remote.path} changed during the transfer; not marking it transferred "
            "(the sensor requests the new version)"
        )


def part_size_for(size: int, configured: int) -> int:
    """The configured part size, raised (in whole MiB) so the file fits in S3's 10,000 parts."""
    needed = math.ceil(size / S3_MAX_PARTS / MIB) * MIB
    return min(max(configured, needed, S3_MIN_PART), S3_MAX_PART)


# --- object store helpers --------------------------------------------------------------------


def head_with_metadata(object_store: ObjectStore, key: str) -> dict | None:
    """Size, ETag and the transfer metadata of `key`, or None when it does not exist."""
    try:
        response = object_store.client().head_object(Bucket=object_store.bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    metadata = response.get("Metadata", {})
    return {
        "size": response["ContentLength"],
        "etag": response["ETag"].strip('"'),
        "last_modified": response["LastModified"],
        "sha256": metadata.get(SHA256_METADATA),
        "mtime": metadata.get(MTIME_METADATA),
    }


def abort_unfinished_uploads(object_store: ObjectStore, key: str, context=None) -> int:
    """Abort multipart uploads of exactly `key` left by an attempt that was killed before
    s3transfer could abort them (they are invisible, but hold storage until aborted)."""
    client = object_store.client()
    response = client.list_multipart_uploads(Bucket=object_store.bucket, Prefix=key)
    stale = [u for u in response.get("Uploads", []) if u["Key"] == key]
    for upload in stale:
        client.abort_multipart_upload(Bucket=object_store.bucket, Key=key, UploadId=upload["UploadId"])
    if stale and context is not None:
        context.log.warning(f"aborted {len(stale)} unfinished upload(s) of {key} from an earlier attempt")
    return len(stale)


# --- remote_transfers (migration 005) --------------------------------------------------------


def record_transfer(
    results_db: ResultsDatabase,
    remote_host: RemoteArchiveHost,
    remote: RemoteFile,
    stored: dict,
    *,
    moved_to: str | None,
    run_id: str | None,
) -> None:
    """One row per remote file version; a re-run updates it."""
    with results_db.connect() as conn, conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO remote_transfers (remote_host, remote_path, remote_size, remote_mtime,
                                          sha256, object_key, object_etag, moved_to, run_id)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (remote_host, remote_path, remote_size, remote_mtime) DO UPDATE SET
                sha256 = EXCLUDED.sha256, object_key = EXCLUDED.object_key,
                object_etag = EXCLUDED.object_etag, moved_to = EXCLUDED.moved_to,
                run_id = EXCLUDED.run_id, transferred_at = now()
            """,
            (
                remote_host.address,
                _origin_path(remote_host, remote.name),
                remote.size,
                remote.mtime,
                stored["sha256"],
                f"{ARCHIVE_PREFIX}{remote.name}",
                stored["etag"],
                moved_to,
                run_id,
            ),
        )


def recorded_versions(
    results_db: ResultsDatabase, remote_host: RemoteArchiveHost, files: Iterable[RemoteFile]
) -> set[str]:
    """RemoteFile.version of each of `files` that remote_transfers lists as transferred."""
    files = list(files)
    if not files:
        return set()
    paths = {_origin_path(remote_host, f.name): f.name for f in files}
    with results_db.connect() as conn, conn.cursor(cursor_factory=psycopg2.extras.DictCursor) as cur:
        cur.execute(
            "SELECT remote_path, remote_size, remote_mtime FROM remote_transfers "
            "WHERE remote_host = %s AND remote_path = ANY(%s)",
            (remote_host.address, list(paths)),
        )
        return {
            f"{paths[row['remote_path']]}@{row['remote_size']}@{row['remote_mtime']}" for row in cur.fetchall()
        }


def _origin_path(remote_host: RemoteArchiveHost, name: str) -> str:
    # Where the file arrived, even when it now sits in done_dir: one key per delivery.
    return posixpath.join(remote_host.remote_dir, name)
