"""ObjectStore against a real SeaweedFS S3 server, plus its retry policy."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import boto3.exceptions
import botocore.exceptions
import pytest

from resources.embedded.seaweedfs import SeaweedS3, start_seaweedfs, stop_seaweedfs
from resources.object_store import (
    ObjectNotFoundError,
    ObjectStore,
    RetriesExhaustedError,
    is_transient_s3_error,
    retry_with_backoff,
)

pytestmark = pytest.mark.integration


def _store_like(store: ObjectStore, **changes) -> ObjectStore:
    fields = {
        "endpoint_url": store.endpoint_url,
        "bucket": store.bucket,
        "access_key": store.access_key,
        "secret_key": store.secret_key,
    }
    return ObjectStore(**{**fields, **changes})


def _store_for(server: SeaweedS3, bucket: str, **settings) -> ObjectStore:
    return ObjectStore(
        endpoint_url=server.endpoint_url,
        bucket=bucket,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **settings,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "PutObject")


# --- basic operations -------------------------------------------------------------


def test_put_head_get_delete_round_trip(object_store: ObjectStore):
    stored = object_store.put_bytes("manifests/a.json", b'{"n": 1}', content_type="application/json")

    assert stored.size == 8
    assert object_store.head("manifests/a.json") == stored
    assert object_store.get_bytes("manifests/a.json") == b'{"n": 1}'
    content_type = object_store.client().head_object(Bucket=object_store.bucket, Key="manifests/a.json")
    assert content_type["ContentType"] == "application/json"

    object_store.delete("manifests/a.json")
    assert object_store.head("manifests/a.json") is None
    object_store.delete("manifests/a.json")  # deleting again is not an error


def test_missing_objects_are_reported_as_such(object_store: ObjectStore, tmp_path: Path):
    assert object_store.head("nope") is None
    with pytest.raises(ObjectNotFoundError):
        object_store.get_bytes("nope")
    with pytest.raises(ObjectNotFoundError):
        object_store.download_file("nope", tmp_path / "nope")
    assert not list(tmp_path.iterdir()), "a failed download must leave no file behind"


def test_ensure_bucket_is_idempotent(object_store: ObjectStore):
    object_store.ensure_bucket()
    object_store.ensure_bucket()
    assert object_store.bucket in [b["Name"] for b in object_store.client().list_buckets()["Buckets"]]


def test_client_is_shared_per_configuration(object_store: ObjectStore):
    assert _store_like(object_store).client() is object_store.client()
    assert _store_like(object_store, max_attempts=2).client() is not object_store.client()


# --- listing ------------------------------------------------------------------------


def test_iter_objects_follows_pagination_past_one_page(object_store: ObjectStore):
    keys = [f"incoming/{i:05d}.tar" for i in range(1100)]
    client = object_store.client()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=object_store.bucket, Key=key, Body=b"x"), keys))
    object_store.put_bytes("other/outside-the-prefix", b"y")

    first_page = client.list_objects_v2(Bucket=object_store.bucket, Prefix="incoming/")
    assert first_page["IsTruncated"], "the server must need more than one page for this test"

    listed = list(object_store.iter_objects("incoming/"))
    assert [info.key for info in listed] == keys
    assert all(info.size == 1 and info.etag for info in listed)

    after = [info.key for info in object_store.iter_objects("incoming/", start_after=keys[999])]
    assert after == keys[1000:]


def test_delete_prefix_deletes_only_that_prefix(object_store: ObjectStore):
    for i in range(5):
        object_store.put_bytes(f"scratch/run-1/{i}", b"x")
    object_store.put_bytes("scratch/run-2/keep", b"x")

    assert object_store.delete_prefix("scratch/run-1/") == 5
    assert [info.key for info in object_store.iter_objects("scratch/")] == ["scratch/run-2/keep"]
    with pytest.raises(ValueError):
        object_store.delete_prefix("")


# --- transfers ----------------------------------------------------------------------


def test_multipart_upload_and_download_round_trip(object_store: ObjectStore, tmp_path: Path):
    # 5 MiB is the smallest part S3 allows; 11 MiB makes three parts.
    store = _store_like(object_store, multipart_threshold_mb=5, multipart_chunk_mb=5)
    source = tmp_path / "archive.tar"
    source.write_bytes(os.urandom(11 * 1024 * 1024))

    uploaded = store.upload_file(source, "incoming/archive.tar", content_type="application/x-tar")
    assert uploaded.size == source.stat().st_size
    assert uploaded.etag.endswith("-3"), f"expected a 3-part multipart ETag, got {uploaded.etag}"

    target = tmp_path / "downloads" / "archive.tar"
    downloaded = store.download_file("incoming/archive.tar", target)
    assert downloaded == uploaded
    assert _sha256(target) == _sha256(source)
    assert sorted(p.name for p in target.parent.iterdir()) == ["archive.tar"]


def test_small_file_upload_is_verified_and_single_part(object_store: ObjectStore, tmp_path: Path):
    source = tmp_path / "clip.opus"
    source.write_bytes(b"OggS" + os.urandom(1000))

    uploaded = object_store.upload_file(source, "processed/2024-01-01/1.opus", content_type="audio/ogg")

    assert uploaded.size == 1004 and "-" not in uploaded.etag
    assert object_store.get_bytes("processed/2024-01-01/1.opus") == source.read_bytes()


def test_permanent_errors_are_not_retried(s3_server: SeaweedS3, tmp_path: Path):
    store = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        bucket="wrong-credentials",
        access_key=s3_server.access_key,
        secret_key="not-the-secret",
        upload_attempts=5,
        backoff_base_s=2.0,
    )
    source = tmp_path / "clip.bin"
    source.write_bytes(b"x")

    started = time.monotonic()
    with pytest.raises((boto3.exceptions.S3UploadFailedError, botocore.exceptions.ClientError)):
        store.upload_file(source, "clip.bin")
    assert time.monotonic() - started < 2.0, "a signature error must fail at once, not back off"


def test_upload_waits_out_a_server_restart(tmp_path: Path):
    data_dir = tmp_path / "seaweedfs"
    server = start_seaweedfs(data_dir)
    port = urlsplit(server.endpoint_url).port
    try:
        store = _store_for(server, "restart-test", max_attempts=2, upload_attempts=10, backoff_base_s=0.25)
        store.ensure_bucket()
        source = tmp_path / "clip.bin"
        source.write_bytes(os.urandom(256 * 1024))
        stop_seaweedfs(server)

        outcome: dict = {}

        def upload() -> None:
            try:
                outcome["info"] = store.upload_file(source, "incoming/clip.bin")
            except Exception as error:  # handed to the main thread's assertions
                outcome["error"] = error

        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive(), f"upload ended while the server was down: {outcome}"

        start_seaweedfs(data_dir, port=port)
        thread.join(timeout=45)

        assert not thread.is_alive(), "upload did not finish after the server came back"
        assert "error" not in outcome, outcome.get("error")
        assert outcome["info"].size == source.stat().st_size
        assert store.get_bytes("incoming/clip.bin") == source.read_bytes()
    finally:
        stop_seaweedfs(data_dir)


# --- retry policy (a fake function, no server) ---------------------------------------


def test_retry_with_backoff_retries_transient_errors_then_succeeds():
    calls: list[int] = []
    delays: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return "stored"

    result = retry_with_backoff(flaky, 5, 0.5, is_transient_s3_error, sleep=delays.append)

    assert result == "stored"
    assert len(calls) == 3
    assert len(delays) == 2
    assert 0 <= delays[0] <= 0.5 and 0 <= delays[1] <= 1.0  # full jitter under base * 2**n


def test_retry_with_backoff_gives_up_with_a_clear_message():
    delays: list[float] = []
    last = _client_error("SlowDown", 503)

    def always_throttled() -> None:
        raise last

    with pytest.raises(RetriesExhaustedError) as raised:
        retry_with_backoff(
            always_throttled, 4, 0.1, is_transient_s3_error, description="upload of clip.opus", sleep=delays.append
        )

    assert "upload of clip.opus failed after 4 attempts" in str(raised.value)
    assert "SlowDown" in str(raised.value)
    assert raised.value.__cause__ is last
    assert len(delays) == 3


def test_retry_with_backoff_raises_permanent_errors_at_once():
    calls: list[int] = []

    def denied() -> None:
        calls.append(1)
        raise _client_error("AccessDenied", 403)

    with pytest.raises(botocore.exceptions.ClientError):
        retry_with_backoff(denied, 5, 0.1, is_transient_s3_error, sleep=lambda _: None)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), True),
        (_client_error("InternalError", 500), True),
        (_client_error("SlowDown", 503), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("NoSuchBucket", 404), False),
        (ValueError("bad argument"), False),
    ],
)
def test_is_transient_s3_error(error: BaseException, transient: bool):
    assert is_transient_s3_error(error) is transient


@pytest.mark.parametrize(
    ("cause", "transient"),
    [(_client_error("InternalError", 500), True), (_client_error("AccessDenied", 403), False)],
)
def test_upload_failed_error_is_judged_by_its_cause(cause: Exception, transient: bool):
    # boto3 raises S3UploadFailedError inside `except ClientError`, which chains the
    # ClientError as __context__; build the same shape.
    error = boto3.exceptions.S3UploadFailedError("Failed to upload clip.opus")
    error.__context__ = cause
    assert is_transient_s3_error(error) is transient
