"""ObjectStore against a real SeaweedFS S3 server, plus its retry layers."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import boto3.exceptions
import botocore.exceptions
import pytest
from s3transfer.exceptions import S3DownloadFailedError

from embedded_services.seaweedfs import SeaweedS3, start_seaweedfs, stop_seaweedfs
from resources.object_store import IncompleteTransferError, ObjectNotFoundError, ObjectStore
from review.audio import s3_client_for
from review.settings import ReviewSettings
from s3_client import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_MAX_ATTEMPTS, DEFAULT_READ_TIMEOUT_S

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
    assert _store_like(object_store, read_timeout_s=5).client() is not object_store.client()
    config = _store_like(object_store, connect_timeout_s=3, read_timeout_s=7).client().meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 7)
    assert config.retries == {"mode": "standard", "total_max_attempts": DEFAULT_MAX_ATTEMPTS}


def test_the_console_gets_the_pipelines_client_with_the_same_defaults(object_store: ObjectStore):
    settings = ReviewSettings(
        database_dsn="unused",
        s3_endpoint=object_store.endpoint_url,
        s3_bucket=object_store.bucket,
        s3_access_key=object_store.access_key,
        s3_secret_key=object_store.secret_key,
    )
    assert s3_client_for(settings) is object_store.client()  # one factory (s3_client.py), one set of defaults
    config = object_store.client().meta.config
    assert (config.connect_timeout, config.read_timeout) == (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S)


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


def test_iter_objects_lists_keys_as_boto3_does(object_store: ObjectStore):
    """The listing parses S3's XML itself: it must agree with botocore on awkward keys."""
    names = ["a b.tar", "a+b.tar", "100%.tar", "caf\u00e9 \u00fcber.tar.gz", "q?x=1&y=<2>.tar", "tab\there.tar"]
    for name in names:
        object_store.put_bytes(f"odd/{name}", name.encode())
    ours = [(i.key, i.etag, i.size, i.last_modified) for i in object_store.iter_objects("odd/")]
    page = object_store.client().list_objects_v2(Bucket=object_store.bucket, Prefix="odd/")
    boto = [(c["Key"], c["ETag"].strip('"'), c["Size"], c["LastModified"]) for c in page["Contents"]]
    assert ours == boto
    assert sorted(k for k, *_ in ours) == sorted(f"odd/{n}" for n in names)


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
        # botocore's backoff starts at 50 ms and doubles up to 20 s: 15 attempts span a restart
        # of a few seconds (the default 6 span under 1.6 s; see the module docstring).
        store = _store_for(server, "restart-test", max_attempts=15)
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


# --- one retry layer per kind of failure ---------------------------------------------


class _Always500(http.server.BaseHTTPRequestHandler):
    """Answers every request with S3's InternalError, after reading its body."""

    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" instead of making it wait 1 s

    def _fail(self) -> None:
        self.server.requests.append(self.command)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = _fail

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _server_answering_500() -> Iterator[tuple[str, list[str]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always500)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.requests
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _server_closing_connections() -> Iterator[tuple[str, list[str]]]:
    """Accepts each connection and closes it at once: the client sees a dropped connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    accepted: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append("connection")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@pytest.mark.parametrize("failing_server", [_server_answering_500, _server_closing_connections])
@pytest.mark.parametrize("operation", ["put_bytes", "head"])
def test_a_failing_request_is_sent_max_attempts_times_in_all(failing_server, operation: str):
    with failing_server() as (endpoint_url, requests):
        store = ObjectStore(endpoint_url=endpoint_url, bucket="b", access_key="k", secret_key="s", max_attempts=3)
        with pytest.raises((botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
            if operation == "put_bytes":
                store.put_bytes("clip.opus", b"OggS")
            else:
                store.head("clip.opus")

    # botocore's attempts only: a second layer around them would make it 3 x its own count.
    assert len(requests) == 3


def _fake_downloads(monkeypatch, store: ObjectStore, failures: list) -> list[str]:
    """Make the client's download_file fail with `failures` in turn (a short file, or an
    exception to raise), then download for real; returns the keys it was called with."""
    real = store.client().download_file
    calls: list[str] = []

    def download_file(bucket, key, filename, **kwargs):
        calls.append(key)
        if len(calls) > len(failures):
            return real(bucket, key, filename, **kwargs)
        failure = failures[len(calls) - 1]
        if isinstance(failure, Exception):
            raise failure
        Path(filename).write_bytes(failure)

    monkeypatch.setattr(store.client(), "download_file", download_file)
    return calls


@pytest.mark.parametrize(
    "failure",
    [b"short", S3DownloadFailedError('Contents of stored object "k" did not match expected ETag.')],
    ids=["short file", "object replaced mid-download"],
)
def test_a_download_that_fails_its_integrity_check_is_repeated(
    object_store: ObjectStore, tmp_path: Path, monkeypatch, failure
):
    data = os.urandom(1000)
    object_store.put_bytes("incoming/a.bin", data)
    calls = _fake_downloads(monkeypatch, object_store, [failure])

    object_store.download_file("incoming/a.bin", tmp_path / "a.bin")

    assert len(calls) == 2
    assert (tmp_path / "a.bin").read_bytes() == data


def test_integrity_failures_are_attempted_integrity_attempts_times_at_most(
    object_store: ObjectStore, tmp_path: Path, monkeypatch
):
    object_store.put_bytes("incoming/a.bin", os.urandom(1000))
    calls = _fake_downloads(monkeypatch, object_store, [b"short"] * 10)

    with pytest.raises(IncompleteTransferError, match="3 time"):
        object_store.download_file("incoming/a.bin", tmp_path / "a.bin")

    assert object_store.integrity_attempts == 3 and len(calls) == 3
    assert not list(tmp_path.iterdir()), "a failed download must leave no file behind"


def test_request_errors_are_not_repeated_by_the_integrity_loop(object_store: ObjectStore, tmp_path: Path, monkeypatch):
    object_store.put_bytes("incoming/a.bin", b"x")
    calls = _fake_downloads(monkeypatch, object_store, [_client_error("InternalError", 500)] * 10)

    with pytest.raises(botocore.exceptions.ClientError):
        object_store.download_file("incoming/a.bin", tmp_path / "a.bin")

    assert len(calls) == 1  # botocore retried the request already
