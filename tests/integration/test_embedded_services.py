"""The embedded SeaweedFS and PostgreSQL servers: start, reuse, stop, loopback only."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import botocore.config
import psycopg2
import pytest

from embedded_services.ports import free_tcp_ports
from embedded_services.postgres import LocalPostgres, create_database, ensure_postgres, stop_postgres
from embedded_services.seaweedfs import (
    SeaweedFSError,
    SeaweedS3,
    ensure_seaweedfs,
    start_seaweedfs,
    stop_seaweedfs,
)

pytestmark = pytest.mark.integration


def _s3_client(server: SeaweedS3):
    # Retries like the pipeline's ObjectStore client: right after a restart the S3 gateway
    # answers before its volume server has re-registered, and a read can get a 500 for a
    # moment (seen under load). Callers are expected to retry that, so the test does too.
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 8}),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- SeaweedFS ----------------------------------------------------------------------


def _listening_addresses(pid: int) -> set[str]:
    """IP addresses of the TCP sockets `pid` listens on, read from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                hex_ip = local.split(":")[0]
                packed = bytes.fromhex(hex_ip)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = [packed[i : i + 4][::-1] for i in range(0, len(packed), 4)]
                addresses.add(str(ipaddress.ip_address(b"".join(words))))
    return addresses


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_seaweedfs_listens_on_loopback_only(s3_server: SeaweedS3):
    assert urlsplit(s3_server.endpoint_url).hostname == "127.0.0.1"
    assert _listening_addresses(s3_server.pid) == {"127.0.0.1"}


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_postgres_listens_on_loopback_only(postgres_server: LocalPostgres):
    postmaster_pid = int((postgres_server.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert _listening_addresses(postmaster_pid) == {"127.0.0.1"}


def test_ensure_seaweedfs_reuses_a_running_server_and_keeps_data(tmp_path: Path, s3_server: SeaweedS3):
    # s3_server keeps running throughout: two servers side by side must not collide.
    data_dir = tmp_path / "demo-s3"
    port = free_tcp_ports(1)[0]
    try:
        first, started = ensure_seaweedfs(data_dir, port)
        assert started
        assert first.endpoint_url == f"http://127.0.0.1:{port}"
        _s3_client(first).create_bucket(Bucket="archives")
        _s3_client(first).put_object(Bucket="archives", Key="a.tar", Body=b"tar bytes")

        again, started = ensure_seaweedfs(data_dir, port)
        assert not started
        assert again.pid == first.pid

        stop_seaweedfs(data_dir)
        assert not _alive(first.pid)

        restarted, started = ensure_seaweedfs(data_dir, port)
        assert started and restarted.pid != first.pid
        body = _s3_client(restarted).get_object(Bucket="archives", Key="a.tar")["Body"].read()
        assert body == b"tar bytes"
    finally:
        stop_seaweedfs(data_dir)


def test_ensure_seaweedfs_restarts_when_the_keys_change(tmp_path: Path):
    data_dir = tmp_path / "s3"
    port = free_tcp_ports(1)[0]
    try:
        old, _ = ensure_seaweedfs(data_dir, port, access_key="old-key", secret_key="old-secret")
        new, started = ensure_seaweedfs(data_dir, port, access_key="new-key", secret_key="new-secret")
        assert started and new.pid != old.pid
        _s3_client(new).list_buckets()
    finally:
        stop_seaweedfs(data_dir)


def test_start_seaweedfs_refuses_a_busy_port(tmp_path: Path, s3_server: SeaweedS3):
    busy = urlsplit(s3_server.endpoint_url).port
    with pytest.raises(SeaweedFSError, match="already in use"):
        start_seaweedfs(tmp_path / "s3", port=busy)


def test_start_seaweedfs_refuses_a_second_server_on_one_data_dir(s3_server: SeaweedS3):
    with pytest.raises(SeaweedFSError, match="already runs"):
        start_seaweedfs(s3_server.data_dir)


def test_stop_seaweedfs_without_a_server_does_nothing(tmp_path: Path):
    stop_seaweedfs(tmp_path)


# --- PostgreSQL ---------------------------------------------------------------------


def test_postgres_accepts_password_login_over_loopback_tcp(postgres_server: LocalPostgres):
    with psycopg2.connect(postgres_server.dsn(), connect_timeout=5) as connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT host(inet_server_addr()), current_user")
            assert cursor.fetchone() == ("127.0.0.1", postgres_server.user)
    connection.close()

    wrong = dataclasses.replace(postgres_server, password="wrong")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(wrong.dsn(), connect_timeout=5)


def test_postgres_url_form_connects(postgres_server: LocalPostgres):
    connection = psycopg2.connect(postgres_server.url("postgres"), connect_timeout=5)
    connection.close()


def test_create_database_returns_a_working_dsn(postgres_server: LocalPostgres):
    dsn = create_database(postgres_server, "archive_results")
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS marker (id int)")
    connection.close()

    # Without drop_existing the database and its table stay; with it they start over.
    assert _tables(create_database(postgres_server, "archive_results")) == ["marker"]
    assert _tables(create_database(postgres_server, "archive_results", drop_existing=True)) == []


def test_postgres_dsn_fixture_gives_an_empty_database(postgres_dsn: str):
    assert _tables(postgres_dsn) == []


def test_ensure_postgres_reuses_a_running_server_and_keeps_data():
    # A dir directly under /tmp: as root the server runs as `postgres` (see postgres.py).
    data_dir = Path(tempfile.mkdtemp(prefix="pipeline-test-ensure-pg-"))
    port = free_tcp_ports(1)[0]
    try:
        server, started = ensure_postgres(data_dir, port, durable=False)
        assert started
        dsn = create_database(server, "demo")
        with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
            cursor.execute("CREATE TABLE kept (id int)")
        connection.close()

        _, started = ensure_postgres(data_dir, port, durable=False)
        assert not started

        stop_postgres(data_dir)
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(dsn, connect_timeout=2)

        _, started = ensure_postgres(data_dir, port, durable=False)
        assert started
        assert _tables(dsn) == ["kept"]
    finally:
        stop_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _tables(dsn: str) -> list[str]:
    connection = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name"
            )
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()
