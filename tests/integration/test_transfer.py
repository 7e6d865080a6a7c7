"""The SFTP transfer: a real sshd (Debian openssh-server), a real S3 server, a real PostgreSQL.

remote file -> remote_archive_sensor -> transfer_archive run -> archives/{name} on S3
(verified, SHA-256 in its metadata) -> remote file moved to done/ or recorded in
remote_transfers -> archive_sensor sees the archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from sshd_server import generate_key, known_hosts_line, start_sshd, stop_sshd

from audio_assets.transfer import REMOTE_FILE_TAG, build_transfer_job, transfer_archive
from audio_assets.verified_upload import VerifyingReader, part_size_for
from resources.object_store import MIB, ObjectStore
from resources.remote_host import HostKeyRejected, RemoteArchiveHost, RemoteSession
from resources.results_db import ResultsDatabase
from sensors.archive_sensor import archive_sensor
from sensors.remote_archive_sensor import remote_archive_sensor

pytestmark = pytest.mark.integration

NO_RETRY_JOB = build_transfer_job(retry_policy=None)
AN_HOUR_AGO = int(time.time()) - 3600


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(server)


@pytest.fixture
def remote_dir(sshd) -> Path:
    path = sshd.root / uuid.uuid4().hex[:12]
    path.mkdir()
    return path


def host_for(server, remote_dir: Path, **changes) -> RemoteArchiveHost:
    settings = {
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "private_key_path": str(server.client_key),
        "known_hosts_path": str(server.known_hosts),
        "remote_dir": str(remote_dir),
        "done_dir": "done",
        "min_age_s": 0,
    }
    return RemoteArchiveHost(**(settings | changes))


@pytest.fixture
def remote_host(sshd, remote_dir) -> RemoteArchiveHost:
    return host_for(sshd, remote_dir)


@pytest.fixture
def store(object_store) -> ObjectStore:
    # 5 MiB parts (S3's minimum) so a 12 MiB archive is a three-part multipart upload.
    return ObjectStore(
        endpoint_url=object_store.endpoint_url,
        bucket=object_store.bucket,
        access_key=object_store.access_key,
        secret_key=object_store.secret_key,
        multipart_threshold_mb=5,
        multipart_chunk_mb=5,
    )


def put_remote(directory: Path, name: str, data: bytes, mtime: int = AN_HOUR_AGO) -> Path:
    path = directory / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def sensor_tick(instance, remote_host, results_db, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"remote_host": remote_host, "results_db": results_db}
    )
    result = remote_archive_sensor(context)
    return result, (result.cursor if isinstance(result, dg.SensorResult) else context.cursor)


def run_transfer(job, request_or_name, remote_host, store, results_db, instance=None, **kwargs):
    if isinstance(request_or_name, dg.RunRequest):
        run_config, tags = request_or_name.run_config, request_or_name.tags
    else:
        run_config = {"ops": {"transfer_remote_archive": {"config": {"name": request_or_name}}}}
        tags = {}
    return job.execute_in_process(
        run_config=run_config,
        resources={"remote_host": remote_host, "object_store": store, "results_db": results_db},
        instance=instance,
        tags=tags,
        **kwargs,
    )


def output_metadata(result) -> dict:
    [event] = [e for e in result.all_events if e.is_successful_output]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


def failure_text(run) -> str:
    """The step's error with its causes, as the UI shows it."""
    return run.failure_data_for_node("transfer_remote_archive").error.to_string()


def head(store: ObjectStore, key: str) -> dict | None:
    try:
        return store.client().head_object(Bucket=store.bucket, Key=key)
    except store.client().exceptions.ClientError:
        return None


def unfinished_uploads(store: ObjectStore) -> list[dict]:
    return store.client().list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def transfer_rows(results_db: ResultsDatabase) -> list[dict]:
    return results_db.transfers.all()


@contextlib.contextmanager
def s3_calls(store: ObjectStore):
    """Names of the S3 operations the shared client makes inside the block."""
    calls: list[str] = []

    def record(model, **_):
        calls.append(model.name)

    events = store.client().meta.events
    events.register("before-call.s3", record)
    try:
        yield calls
    finally:
        events.unregister("before-call.s3", record)


@contextlib.contextmanager
def first_part_uploaded(store: ObjectStore):
    """An Event set once the shared client has uploaded a multipart part."""
    uploaded = threading.Event()

    def record(**_):
        uploaded.set()

    events = store.client().meta.events
    events.register("after-call.s3.UploadPart", record)
    try:
        yield uploaded
    finally:
        events.unregister("after-call.s3.UploadPart", record)


WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject"}


# --- the sensor --------------------------------------------------------------------------------


def test_sensor_requests_a_run_per_new_archive_and_skips_once_requested(instance, remote_host, remote_dir, results_db):
    put_remote(remote_dir, "batch_a.tar", b"a" * 100)
    put_remote(remote_dir, "batch_b.TGZ", b"b" * 200)
    put_remote(remote_dir, "notes.txt", b"not an archive")
    (remote_dir / "folder.tar").mkdir()  # a directory, however it is named

    result, cursor = sensor_tick(instance, remote_host, results_db)

    assert isinstance(result, dg.SensorResult)
    by_name = {r.tags[REMOTE_FILE_TAG]: r for r in result.run_requests}
    assert set(by_name) == {"batch_a.tar", "batch_b.TGZ"}
    request = by_name["batch_a.tar"]
    assert request.run_key == f"batch_a.tar@100@{AN_HOUR_AGO}"
    assert request.run_config["ops"]["transfer_remote_archive"]["config"] == {
        "name": "batch_a.tar",
        "size": 100,
        "mtime": AN_HOUR_AGO,
    }
    assert len(cursor) < 100  # two 12-hex fingerprints

    again, cursor_after = sensor_tick(instance, remote_host, results_db, cursor)
    assert isinstance(again, dg.SkipReason)
    assert cursor_after == cursor


def test_sensor_requests_a_replaced_file_again(instance, remote_host, remote_dir, results_db):
    put_remote(remote_dir, "batch.tar", b"version one")
    first, cursor = sensor_tick(instance, remote_host, results_db)
    put_remote(remote_dir, "batch.tar", b"version two, longer", mtime=AN_HOUR_AGO + 60)

    second, cursor = sensor_tick(instance, remote_host, results_db, cursor)

    [old], [new] = first.run_requests, second.run_requests
    assert new.run_key != old.run_key
    assert new.run_key == f"batch.tar@19@{AN_HOUR_AGO + 60}"
    assert len(cursor) < 50  # the replaced version was forgotten


def test_sensor_waits_until_a_file_has_settled(instance, sshd, remote_dir, results_db):
    host = host_for(sshd, remote_dir, min_age_s=300)
    put_remote(remote_dir, "growing.tar", b"still being written", mtime=int(time.time()))

    result, _ = sensor_tick(instance, host, results_db)

    assert isinstance(result, dg.SkipReason)
    assert "1 still settling" in result.skip_message


def test_sensor_without_remote_host_skips_with_a_reason(instance, results_db):
    result, _ = sensor_tick(instance, RemoteArchiveHost(), results_db)
    assert isinstance(result, dg.SkipReason)
    assert "REMOTE_HOST is not set" in result.skip_message


# --- the transfer ------------------------------------------------------------------------------


def test_sensor_run_uploads_a_verified_multipart_object_and_moves_the_file_to_done(
    instance, remote_host, remote_dir, store, results_db
):
    data = os.urandom(12 * MIB + 12345)
    put_remote(remote_dir, "batch_2026_11_03.tar.gz", data)
    result, cursor = sensor_tick(instance, remote_host, results_db)
    [request] = result.run_requests

    with s3_calls(store) as calls:
        run = run_transfer(transfer_archive, request, remote_host, store, results_db, instance=instance)

    assert run.success
    assert calls.count("UploadPart") == 3 and "PutObject" not in calls
    stored = head(store, "archives/batch_2026_11_03.tar.gz")
    assert stored["ContentLength"] == len(data)
    assert stored["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored["ETag"].strip('"').endswith("-3")
    assert store.get_bytes("archives/batch_2026_11_03.tar.gz") == data
    assert not (remote_dir / "batch_2026_11_03.tar.gz").exists()
    assert (remote_dir / "done" / "batch_2026_11_03.tar.gz").read_bytes() == data
    [row] = transfer_rows(results_db)
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["moved_to"] == str(remote_dir / "done" / "batch_2026_11_03.tar.gz")
    assert row["remote_size"] == len(data) and row["remote_mtime"] == AN_HOUR_AGO
    assert output_metadata(run)["uploaded"] is True
    assert unfinished_uploads(store) == []

    after, _ = sensor_tick(instance, remote_host, results_db, cursor)
    assert isinstance(after, dg.SkipReason)


def test_small_archive_is_one_put_with_a_verified_etag(remote_host, remote_dir, store, results_db):
    data = b"tiny archive" * 100
    put_remote(remote_dir, "small.tar", data)

    with s3_calls(store) as calls:
        run = run_transfer(NO_RETRY_JOB, "small.tar", remote_host, store, results_db)

    assert run.success
    assert calls.count("PutObject") == 1 and "CreateMultipartUpload" not in calls
    stored = head(store, "archives/small.tar")
    assert stored["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert stored["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_rerun_does_not_upload_again(remote_host, remote_dir, store, results_db):
    put_remote(remote_dir, "batch.tar", os.urandom(6 * MIB))
    assert run_transfer(NO_RETRY_JOB, "batch.tar", remote_host, store, results_db).success
    before = head(store, "archives/batch.tar")

    with s3_calls(store) as calls:
        again = run_transfer(NO_RETRY_JOB, "batch.tar", remote_host, store, results_db)

    assert again.success
    assert not WRITES & set(calls)
    after = head(store, "archives/batch.tar")
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    assert output_metadata(again)["uploaded"] is False
    assert len(transfer_rows(results_db)) == 1


def test_without_done_dir_the_file_stays_and_postgres_records_it(instance, sshd, remote_dir, store, results_db):
    host = host_for(sshd, remote_dir, done_dir=None)
    data = os.urandom(2 * MIB)
    put_remote(remote_dir, "kept.tar", data)
    result, cursor = sensor_tick(instance, host, results_db)
    [request] = result.run_requests

    assert run_transfer(NO_RETRY_JOB, request, host, store, results_db).success

    assert (remote_dir / "kept.tar").read_bytes() == data
    assert not (remote_dir / "done").exists()
    [row] = transfer_rows(results_db)
    assert row["remote_path"] == str(remote_dir / "kept.tar") and row["moved_to"] is None
    # Transferred files are filtered by the record, not the cursor: a fresh cursor skips too.
    for tick_cursor in (cursor, None):
        again, _ = sensor_tick(instance, host, results_db, tick_cursor)
        assert isinstance(again, dg.SkipReason)
    with s3_calls(store) as calls:
        assert run_transfer(NO_RETRY_JOB, request, host, store, results_db).success
    assert not WRITES & set(calls)


class FailingHandle:
    """A remote file whose connection drops after `limit` bytes, once `before_failing` returns."""

    def __init__(self, handle, limit: int, before_failing=lambda: None):
        self.handle, self.limit, self.sent = handle, limit, 0
        self.before_failing = before_failing

    def read(self, size=-1):
        data = self.handle.read(size)
        self.sent += len(data)
        if self.sent > self.limit:
            self.before_failing()
            raise ConnectionResetError("connection to the remote host lost mid-transfer")
        return data


def fail_first_reads(monkeypatch, after_bytes: int, times: int = 1_000, before_failing=lambda: None) -> list[int]:
    """Make the next `times` opens of a remote file fail after `after_bytes` bytes."""
    original = RemoteSession.open
    opened: list[int] = []

    @contextlib.contextmanager
    def failing_open(self, remote):
        with original(self, remote) as handle:
            opened.append(1)
            yield FailingHandle(handle, after_bytes, before_failing) if len(opened) <= times else handle

    monkeypatch.setattr(RemoteSession, "open", failing_open)
    return opened


def test_interrupted_transfer_leaves_no_object_and_no_unfinished_upload(
    instance, monkeypatch, remote_host, remote_dir, store, results_db
):
    data = os.urandom(12 * MIB)
    put_remote(remote_dir, "batch.tar", data)
    with s3_calls(store) as calls, first_part_uploaded(store) as part_uploaded:
        # Parts upload on other threads: wait for one, so the drop comes mid-upload, not before.
        fail_first_reads(monkeypatch, after_bytes=7 * MIB, before_failing=lambda: part_uploaded.wait(timeout=30))
        run = run_transfer(NO_RETRY_JOB, "batch.tar", remote_host, store, results_db, raise_on_error=False)

    assert not run.success
    assert "CreateMultipartUpload" in calls and "UploadPart" in calls
    assert "AbortMultipartUpload" in calls and "CompleteMultipartUpload" not in calls
    assert head(store, "archives/batch.tar") is None
    assert unfinished_uploads(store) == []
    assert (remote_dir / "batch.tar").exists() and not (remote_dir / "done").exists()
    assert transfer_rows(results_db) == []
    nothing, _ = archive_sensor_tick(instance, store, results_db)
    assert isinstance(nothing, dg.SkipReason)

    monkeypatch.undo()
    assert run_transfer(NO_RETRY_JOB, "batch.tar", remote_host, store, results_db).success
    assert store.get_bytes("archives/batch.tar") == data


def test_retry_after_an_interruption_completes_the_transfer(monkeypatch, remote_host, remote_dir, store, results_db):
    data = os.urandom(11 * MIB)
    put_remote(remote_dir, "batch.tar", data)
    opened = fail_first_reads(monkeypatch, after_bytes=6 * MIB, times=1)
    job = build_transfer_job(dg.RetryPolicy(max_retries=2, delay=0))

    run = run_transfer(job, "batch.tar", remote_host, store, results_db)

    assert run.success and len(opened) == 2
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in run.all_events)
    assert store.get_bytes("archives/batch.tar") == data
    assert unfinished_uploads(store) == []


def test_bytes_that_do_not_match_the_remote_sha256_never_become_an_object(
    monkeypatch, remote_host, remote_dir, store, results_db
):
    put_remote(remote_dir, "batch.tar", os.urandom(8 * MIB))
    monkeypatch.setattr(RemoteSession, "sha256", lambda self, remote: "0" * 64)

    run = run_transfer(NO_RETRY_JOB, "batch.tar", remote_host, store, results_db, raise_on_error=False)

    assert not run.success
    assert "differs from the remote file's" in failure_text(run)
    assert head(store, "archives/batch.tar") is None
    assert unfinished_uploads(store) == []
    assert (remote_dir / "batch.tar").exists()


def test_a_stored_object_that_fails_verification_is_deleted(monkeypatch, remote_host, remote_dir, store, results_db):
    put_remote(remote_dir, "batch.tar", os.urandom(6 * MIB))
    monkeypatch.setattr(VerifyingReader, "expected_etag", property(lambda self: "f" * 32 + "-2"))

    run = run_transfer(NO_RETRY_JOB, "batch.tar", remote_host, store, results_db, raise_on_error=False)

    assert not run.success
    assert "ETag" in failure_text(run)
    assert head(store, "archives/batch.tar") is None
    assert (remote_dir / "batch.tar").exists()


def test_an_upload_left_by_a_killed_attempt_is_aborted(remote_host, remote_dir, store, results_db):
    put_remote(remote_dir, "batch.tar", os.urandom(MIB))
    store.client().create_multipart_upload(Bucket=store.bucket, Key="archives/batch.tar")
    store.client().create_multipart_upload(Bucket=store.bucket, Key="archives/batch.tar.other")

    assert run_transfer(NO_RETRY_JOB, "batch.tar", remote_host, store, results_db).success

    assert [u["Key"] for u in unfinished_uploads(store)] == ["archives/batch.tar.other"]


def test_a_file_changed_since_it_was_listed_is_not_transferred(remote_host, remote_dir, store, results_db):
    put_remote(remote_dir, "batch.tar", b"new content")
    config = {"name": "batch.tar", "size": 3, "mtime": AN_HOUR_AGO}

    run = transfer_archive.execute_in_process(
        run_config={"ops": {"transfer_remote_archive": {"config": config}}},
        resources={"remote_host": remote_host, "object_store": store, "results_db": results_db},
        raise_on_error=False,
    )

    assert not run.success
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in run.all_events)
    assert "changed since it was listed" in failure_text(run)
    assert head(store, "archives/batch.tar") is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../escape.tar", "not a plain file name"),
        ("sub/dir.tar", "not a plain file name"),
        ("notes.txt", "matches none"),
    ],
)
def test_names_outside_remote_dir_or_the_patterns_are_refused(name, reason, remote_host, store, results_db):
    run = run_transfer(transfer_archive, name, remote_host, store, results_db, raise_on_error=False)
    assert not run.success
    assert reason in failure_text(run)
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in run.all_events)


def test_resource_methods_each_on_their_own_connection(remote_host, remote_dir):
    data = os.urandom(MIB + 7)
    put_remote(remote_dir, "batch.tar", data)

    [listed] = remote_host.list_archives()
    with remote_host.open("batch.tar") as handle:
        streamed = handle.read()
    digest = remote_host.sha256("batch.tar")
    moved_to = remote_host.mark_transferred("batch.tar")

    assert (listed.name, listed.size, listed.mtime) == ("batch.tar", len(data), AN_HOUR_AGO)
    assert streamed == data and digest == hashlib.sha256(data).hexdigest()
    assert moved_to == str(remote_dir / "done" / "batch.tar")
    assert remote_host.list_archives() == []


# --- host keys ---------------------------------------------------------------------------------


def test_a_wrong_host_key_is_rejected(tmp_path, sshd, remote_dir, store, results_db):
    impostor = generate_key(tmp_path / "other_host_key")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line(sshd.host, sshd.port, impostor))
    host = host_for(sshd, remote_dir, known_hosts_path=str(known_hosts))
    put_remote(remote_dir, "batch.tar", b"secret")

    with pytest.raises(HostKeyRejected, match="differs"):
        host.list_archives()
    run = run_transfer(transfer_archive, "batch.tar", host, store, results_db, raise_on_error=False)
    assert not run.success
    assert "refusing to connect" in failure_text(run)
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in run.all_events)
    assert head(store, "archives/batch.tar") is None


def test_an_unknown_host_is_rejected_and_never_added(tmp_path, sshd, remote_dir):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    host = host_for(sshd, remote_dir, known_hosts_path=str(known_hosts))

    with pytest.raises(HostKeyRejected, match="does not list"):
        host.list_archives()
    assert known_hosts.read_text() == ""


def test_a_key_the_server_does_not_accept_fails_without_retries(tmp_path, sshd, remote_dir, store, results_db):
    generate_key(tmp_path / "stranger")
    host = host_for(sshd, remote_dir, private_key_path=str(tmp_path / "stranger"))
    put_remote(remote_dir, "batch.tar", b"secret")

    run = run_transfer(transfer_archive, "batch.tar", host, store, results_db, raise_on_error=False)

    assert not run.success
    assert "Authentication failed" in failure_text(run)
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in run.all_events)


# --- an sftp-only account ----------------------------------------------------------------------


def test_sftp_only_account_hashes_by_streaming(tmp_path, store, results_db):
    server = start_sshd(tmp_path / "sshd", sftp_only=True)
    try:
        remote_dir = server.root / "in"
        remote_dir.mkdir()
        data = os.urandom(3 * MIB)
        put_remote(remote_dir, "batch.tar", data)
        host = host_for(server, remote_dir)

        assert host.sha256("batch.tar") == hashlib.sha256(data).hexdigest()
        assert run_transfer(NO_RETRY_JOB, "batch.tar", host, store, results_db).success
        assert head(store, "archives/batch.tar")["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        stop_sshd(server)


# --- hand-over to the archive pipeline ---------------------------------------------------------


def archive_sensor_tick(instance, store, results_db):
    context = dg.build_sensor_context(instance=instance, resources={"object_store": store, "results_db": results_db})
    result = archive_sensor(context)
    return result, context.cursor


def test_archive_sensor_sees_the_transferred_archive(instance, remote_host, remote_dir, store, results_db):
    put_remote(remote_dir, "batch_2026_11_04.tar", os.urandom(7 * MIB))
    [request] = sensor_tick(instance, remote_host, results_db)[0].run_requests
    assert run_transfer(transfer_archive, request, remote_host, store, results_db, instance=instance).success

    result, _ = archive_sensor_tick(instance, store, results_db)

    assert isinstance(result, dg.SensorResult)
    [archive_request] = result.run_requests
    etag = head(store, "archives/batch_2026_11_04.tar")["ETag"].strip('"')
    assert archive_request.partition_key == "batch_2026_11_04"
    assert archive_request.run_key == f"archives/batch_2026_11_04.tar@{etag}#1"  # the first request of this version


# --- pure parts --------------------------------------------------------------------------------


def test_part_size_grows_so_any_file_fits_in_ten_thousand_parts():
    assert part_size_for(10 * MIB, 16 * MIB) == 16 * MIB
    assert part_size_for(10 * MIB, MIB) == 5 * MIB  # S3's minimum
    big = 500 * 1024 * MIB
    assert part_size_for(big, 16 * MIB) == 52 * MIB
    assert big / part_size_for(big, 16 * MIB) <= 10_000
