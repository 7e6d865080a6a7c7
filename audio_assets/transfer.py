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

This module wires the steps together; the hashing reader is in verified_upload.py, the S3
calls are ObjectStore methods, and remote_transfers is read and written through
results_db.transfers (SQL in sql/queries/transfers.sql).
"""

import posixpath
import time
from collections.abc import Iterable

import dagster as dg
import paramiko
from pydantic import Field

from archive_identity import ARCHIVE_PREFIX
from audio_assets.archive_job import gated_step
from audio_assets.verified_upload import S3_MIN_PART, TransferVerificationError, VerifyingReader, part_size_for
from resources.object_store import MIB, ObjectInfo, ObjectStore
from resources.remote_host import (
    HostKeyRejected,
    InvalidRemoteName,
    RemoteArchiveHost,
    RemoteFile,
    RemoteHostNotConfigured,
    RemoteSession,
)
from resources.results_db import ResultsDatabase, TransferRecord

REMOTE_FILE_TAG = "audio/remote_file"
SHA256_METADATA = "sha256"  # x-amz-meta-sha256 on every transferred archive
MTIME_METADATA = "source-mtime"  # the remote file's mtime, so a re-run can skip without hashing

TRANSFER_RETRY = dg.RetryPolicy(max_retries=4, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class RemoteArchiveConfig(dg.Config):
    name: str = Field(description="file name in the remote host's remote_dir, e.g. batch_2026_11_01.tar.gz")
    size: int | None = Field(default=None, description="size the sensor listed; the run refuses a file that changed")
    mtime: int | None = Field(default=None, description="mtime the sensor listed (epoch seconds)")
    verify_etag: bool = Field(
        default=True,
        description="compare the stored ETag with the MD5s of the parts sent; turn off for stores "
        "whose ETags are not MD5-based (AWS SSE-KMS)",
    )


class RemoteFileChanged(RuntimeError):
    """The remote file is not the version this run was asked to transfer."""


@dg.op(
    description="Streams one remote archive into archives/ (multipart, SHA-256 verified), then marks it transferred",
    pool="remote_transfer",
)
@gated_step
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
    except (
        RemoteHostNotConfigured,
        HostKeyRejected,
        paramiko.AuthenticationException,
        PermissionError,
        InvalidRemoteName,
        RemoteFileChanged,
    ) as error:
        # Retrying cannot fix configuration, trust, permissions or a file that is gone or replaced.
        raise dg.Failure(str(error), allow_retries=False) from error
    record_transfer(results_db, remote_host, remote, stored, moved_to=moved_to, run_id=context.run.run_id)
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
            "sha256": stored.metadata[SHA256_METADATA],
            "etag": stored.etag,
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
            "transfer_remote_archive": {"config": {"name": remote.name, "size": remote.size, "mtime": remote.mtime}}
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
) -> tuple[ObjectInfo, bool]:
    """The verified object for `remote`, uploading it only if it is not there yet."""
    existing = object_store.head(key)
    if existing is not None and _same_version(existing, remote):
        return existing, False
    remote_sha256 = session.sha256(remote)
    if existing and existing.size == remote.size and existing.metadata.get(SHA256_METADATA) == remote_sha256:
        return existing, False  # same bytes under a new mtime (copied again): nothing to send
    aborted = object_store.abort_unfinished_uploads(key)
    if aborted:
        context.log.warning(f"aborted {aborted} unfinished upload(s) of {key} from an earlier attempt")
    reader = _upload(session, object_store, key, remote, remote_sha256)
    stored = object_store.head(key)
    problem = _verification_problem(stored, remote, remote_sha256, reader, config.verify_etag)
    if problem or stored is None:
        object_store.delete(key)
        raise TransferVerificationError(f"s3://{object_store.bucket}/{key}: {problem}; deleted it")
    return stored, True


def _same_version(existing: ObjectInfo | None, remote: RemoteFile) -> bool:
    return bool(
        existing
        and existing.metadata.get(SHA256_METADATA)
        and existing.size == remote.size
        and existing.metadata.get(MTIME_METADATA) == str(remote.mtime)
    )


def _upload(
    session: RemoteSession, object_store: ObjectStore, key: str, remote: RemoteFile, sha256: str
) -> VerifyingReader:
    threshold = max(object_store.multipart_threshold_mb * MIB, S3_MIN_PART)
    part_size = part_size_for(remote.size, object_store.multipart_chunk_mb * MIB)
    with session.open(remote) as handle:
        reader = VerifyingReader(
            handle,
            expected_size=remote.size,
            expected_sha256=sha256,
            part_size=part_size,
            multipart_threshold=threshold,
        )
        object_store.upload_stream(
            reader,
            key,
            metadata={SHA256_METADATA: sha256, MTIME_METADATA: str(remote.mtime)},
            part_size=part_size,
            threshold=threshold,
        )
    return reader


def _verification_problem(
    stored: ObjectInfo | None, remote: RemoteFile, sha256: str, reader: VerifyingReader, verify_etag: bool
) -> str | None:
    if stored is None:
        return "missing after the upload completed"
    if stored.size != remote.size:
        return f"holds {stored.size} bytes, the remote file {remote.size}"
    stored_sha256 = stored.metadata.get(SHA256_METADATA)
    if stored_sha256 != sha256:
        return f"metadata sha256 {stored_sha256!r} differs from the remote file's {sha256}"
    if verify_etag and stored.etag != reader.expected_etag:
        return f"ETag {stored.etag} differs from {reader.expected_etag} computed from the bytes sent"
    return None


def _check_unchanged(session: RemoteSession, remote: RemoteFile) -> None:
    """A file still being written must not be moved or recorded as done."""
    now = session.stat(remote.name)
    if now is None or (now.size, now.mtime) != (remote.size, remote.mtime):
        raise RemoteFileChanged(
            f"{remote.path} changed during the transfer; not marking it transferred "
            "(the sensor requests the new version)"
        )


# --- remote_transfers ------------------------------------------------------------------------


def record_transfer(
    results_db: ResultsDatabase,
    remote_host: RemoteArchiveHost,
    remote: RemoteFile,
    stored: ObjectInfo,
    *,
    moved_to: str | None,
    run_id: str | None,
) -> None:
    """One row per remote file version in remote_transfers; a re-run updates it."""
    results_db.transfers.record(
        TransferRecord(
            remote_host=remote_host.address,
            remote_path=_origin_path(remote_host, remote.name),
            remote_size=remote.size,
            remote_mtime=remote.mtime,
            sha256=stored.metadata[SHA256_METADATA],
            object_key=stored.key,
            object_etag=stored.etag,
            moved_to=moved_to,
            run_id=run_id,
        )
    )


def recorded_versions(
    results_db: ResultsDatabase, remote_host: RemoteArchiveHost, files: Iterable[RemoteFile]
) -> set[str]:
    """RemoteFile.version of each of `files` that remote_transfers lists as transferred."""
    files = list(files)
    recorded = results_db.transfers.recorded_versions(
        remote_host.address, {_origin_path(remote_host, f.name) for f in files}
    )
    return {f.version for f in files if (_origin_path(remote_host, f.name), f.size, f.mtime) in recorded}


def _origin_path(remote_host: RemoteArchiveHost, name: str) -> str:
    # Where the file arrived, even when it now sits in done_dir: one key per delivery.
    return posixpath.join(remote_host.remote_dir, name)
