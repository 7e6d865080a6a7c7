"""The fault-injecting S3 proxy (tests/faults/s3_fault_proxy.py) against a real SeaweedFS.

It must be transparent at fault rate 0, inject each fault kind the way a client sees it from a
failing object store, and at 30 % faults still let retrying clients move the right bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pytest
from s3_fault_proxy import FAULT_KINDS

from resources.object_store import ObjectStore

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def proxied_store(object_store: ObjectStore, endpoint_url: str, **options) -> ObjectStore:
    """The test's bucket and keys, reached through `endpoint_url`."""
    return ObjectStore(
        endpoint_url=endpoint_url,
        bucket=object_store.bucket,
        access_key=object_store.access_key,
        secret_key=object_store.secret_key,
        **options,
    )


def s3_client(store: ObjectStore, *, read_timeout: float, attempts: int):
    """A boto3 client with short timeouts; `attempts` counts the first one (total_max_attempts:
    botocore's `max_attempts` key counts retries only, so max_attempts=1 means two requests)."""
    config = botocore.config.Config(
        connect_timeout=1,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name=store.region,
        config=config,
    )


# --- transparent at fault rate 0 -------------------------------------------------------------


def test_proxy_is_transparent_at_fault_rate_zero(object_store, fault_proxy, tmp_path):
    proxy = fault_proxy(fault_rate=0.0)
    store = proxied_store(object_store, proxy.endpoint_url, multipart_threshold_mb=8, multipart_chunk_mb=8)

    payloads = {f"small/{i:02d}.bin": os.urandom(1000 * (i + 1)) for i in range(5)}
    for key, data in payloads.items():
        store.put_bytes(key, data, content_type="application/octet-stream")
    assert {key: store.get_bytes(key) for key in payloads} == payloads
    assert store.head("small/03.bin").size == 4000 and store.head("small/missing.bin") is None
    assert [info.key for info in store.iter_objects("small/")] == sorted(payloads)
    store.delete("small/00.bin")
    store.delete_many(["small/01.bin", "small/02.bin"])
    assert store.delete_prefix("small/") == 2
    assert list(store.iter_objects("small/")) == []

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * MIB + 12345))
    stored = store.upload_file(big, "big/big.bin")
    assert stored.size == big.stat().st_size and stored.etag.endswith("-6")  # six 8 MiB parts
    store.download_file("big/big.bin", tmp_path / "back.bin")
    assert sha256(tmp_path / "back.bin") == sha256(big)
    # Direct to SeaweedFS, the object is the same one.
    assert object_store.head("big/big.bin").etag == stored.etag

    stats = proxy.stats
    assert stats.injected == 0 and stats.requests >= 25
    assert stats.continues >= 6  # every UploadPart sent Expect: 100-continue


def test_chunked_request_body_reaches_seaweedfs(object_store, fault_proxy):
    """boto3 never sends chunked bodies; a presigned PUT with Transfer-Encoding: chunked does."""
    proxy = fault_proxy(fault_rate=0.0)
    store = proxied_store(object_store, proxy.endpoint_url)
    url = store.client().generate_presigned_url(
        "put_object", Params={"Bucket": store.bucket, "Key": "chunked.bin"}, ExpiresIn=300
    )
    path_and_query = url.split(proxy.endpoint_url, 1)[1]
    data = os.urandom(300_000)
    connection = http.client.HTTPConnection("127.0.0.1", int(proxy.endpoint_url.rsplit(":", 1)[1]), timeout=10)
    try:
        connection.request("PUT", path_and_query, body=iter([data[:100_000], data[100_000:]]), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        connection.close()
    assert object_store.get_bytes("chunked.bin") == data


class _ChunkedUpstream(http.server.BaseHTTPRequestHandler):
    """A stand-in upstream that answers every GET with a chunked body (SeaweedFS sends lengths)."""

    protocol_version = "HTTP/1.1"
    body = b"".join(b"%05d," % i for i in range(20_000))

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for start in range(0, len(self.body), 30_000):
                piece = self.body[start : start + 30_000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the proxy cut this response off (truncate)

    def log_message(self, *args):
        pass


def test_chunked_responses_and_keep_alive():
    from s3_fault_proxy import S3FaultProxy

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with S3FaultProxy(f"http://127.0.0.1:{upstream.server_port}", fault_rate=0.0) as proxy:
            port = int(proxy.endpoint_url.rsplit(":", 1)[1])
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            sockets = set()
            for path in ("/a", "/b?x=1", "/c"):
                connection.request("GET", path)
                response = connection.getresponse()
                assert response.status == 200 and response.read() == _ChunkedUpstream.body
                sockets.add(id(connection.sock))
            assert len(sockets) == 1, "the proxy closed a keep-alive connection"
            proxy.kinds = ("truncate",)
            proxy.set_fault_rate(1.0)
            connection.request("GET", "/d")
            with pytest.raises(http.client.IncompleteRead):
                connection.getresponse().read()
            connection.close()
            assert proxy.stats.requests == 4 and proxy.stats.faults["truncate"] == 1
    finally:
        upstream.shutdown()
        upstream.server_close()


# --- each fault kind, alone ------------------------------------------------------------------

EXPECTED = {
    "500": (botocore.exceptions.ClientError, "InternalError"),
    "503": (botocore.exceptions.ClientError, "SlowDown"),
    # ConnectionClosedError is an HTTPClientError, not a botocore ConnectionError.
    "reset": ((botocore.exceptions.ConnectionClosedError, botocore.exceptions.ConnectionError), ""),
    "truncate": ((botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError), ""),
    "delay": (botocore.exceptions.ReadTimeoutError, ""),
}


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_gives_the_client_its_error(kind, object_store, fault_proxy):
    proxy = fault_proxy(fault_rate=0.0, kinds=(kind,), delay_s=1.0)
    client = s3_client(proxied_store(object_store, proxy.endpoint_url), read_timeout=0.5, attempts=1)
    client.put_object(Bucket=object_store.bucket, Key="there.bin", Body=b"x" * 10_000)
    proxy.reset_stats()
    proxy.set_fault_rate(1.0)

    error_type, code = EXPECTED[kind]
    with pytest.raises(error_type) as caught:
        client.get_object(Bucket=object_store.bucket, Key="there.bin")["Body"].read()
    if code:
        assert caught.value.response["Error"]["Code"] == code
    # A write under the fault: the proxy answers 500/503/reset itself, so nothing is stored;
    # truncate (here a reset after the fact: a PUT's answer has no body) and delay forward it.
    with pytest.raises((botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
        client.put_object(Bucket=object_store.bucket, Key="new.bin", Body=b"y" * 1000)
    proxy.set_fault_rate(0.0)
    stored = object_store.head("new.bin")
    assert (stored is not None) == (kind in ("truncate", "delay"))

    stats = proxy.stats
    assert stats.requests == 2 and stats.faults == {k: 2 if k == kind else 0 for k in FAULT_KINDS}
    assert stats.truncate_as_reset == (1 if kind == "truncate" else 0)


# --- 30 % of requests failing ----------------------------------------------------------------


def get_bytes_retrying_cut_bodies(store: ObjectStore, key: str, attempts: int = 8) -> bytes:
    """get_bytes does not repeat a GET whose body broke off after the response head (botocore
    has returned by then and cannot retry it); callers of small reads must, so this test does."""
    for attempt in range(1, attempts + 1):
        try:
            return store.get_bytes(key)
        except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError):
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def test_retrying_clients_move_the_right_bytes_through_30_percent_faults(object_store, fault_proxy, tmp_path):
    proxy = fault_proxy(fault_rate=0.3, delay_s=1.5, seed=3)
    store = proxied_store(
        object_store,
        proxy.endpoint_url,
        multipart_threshold_mb=8,
        multipart_chunk_mb=8,
        read_timeout_s=1,
        connect_timeout_s=1,
        max_attempts=10,
    )

    def round_trip(i: int) -> bool:
        data = os.urandom(2000 + i)
        store.put_bytes(f"small/{i:02d}.bin", data)
        return get_bytes_retrying_cut_bodies(store, f"small/{i:02d}.bin") == data

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trip, range(50)))

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 * MIB + 777))
    store.upload_file(big, "big/big.bin")
    store.download_file("big/big.bin", tmp_path / "back.bin")
    assert sha256(tmp_path / "back.bin") == sha256(big)

    stats = proxy.stats
    print(
        f"fault proxy: {stats.injected} of {stats.requests} requests failed "
        f"({stats.fault_fraction:.0%}): {stats.faults}, truncate as reset {stats.truncate_as_reset}"
    )
    assert all(stats.faults[kind] > 0 for kind in FAULT_KINDS), stats
    assert stats.fault_fraction >= 0.2, stats
