"""Start and stop a real Redis server (Debian's `redis-server`) on a free loopback port: the
Celery broker and result backend for the multi-worker tests, configured as deploy/README.md asks
of production's: an append-only file in its data folder (a restart keeps the queues, the held
messages and the step delivery counts) and no eviction (a full Redis refuses writes, which the
workers see, rather than drop keys, which they would not). No Dagster import."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from embedded_services.ports import LOOPBACK, free_tcp_ports


class RedisError(RuntimeError):
    """redis-server could not be started; the message carries the log tail."""


@dataclass
class LocalRedis:
    port: int
    data_dir: Path
    process: subprocess.Popen

    def url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"


def start_redis(data_dir: Path, timeout_s: float = 20) -> LocalRedis:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RedisError("redis-server not found: install the Debian package redis-server (bin/setup does)")
    data_dir.mkdir(parents=True, exist_ok=True)
    (port,) = free_tcp_ports(1)
    log = data_dir / "redis.log"
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            LOOPBACK,
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = LocalRedis(port=port, data_dir=data_dir, process=process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _ping(port):
            return server
        time.sleep(0.1)
    stop_redis(server)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RedisError(f"redis-server on port {port} did not answer PING within {timeout_s:g} s\n{tail}")


def stop_redis(server: LocalRedis) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=LOOPBACK, port=port, socket_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False
