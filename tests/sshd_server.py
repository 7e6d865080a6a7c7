"""A real OpenSSH server (Debian openssh-server) on a free loopback port, for the SFTP tests.

Everything it needs is generated in a temp dir: an ed25519 host key, an ed25519 client key,
authorized_keys, a known_hosts line for the host key, and sshd_config. Password and
keyboard-interactive logins are off; the test user logs in with the client key only.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from embedded_services.ports import LOOPBACK, free_tcp_ports

SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshServer:
    host: str
    port: int
    username: str
    client_key: Path
    known_hosts: Path
    host_public_key: str
    root: Path  # a directory the login user can use for remote files
    process: subprocess.Popen
    log_path: Path


def generate_key(path: Path) -> str:
    """A new ed25519 key at `path` (no passphrase); returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return Path(f"{path}.pub").read_text().strip()


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    key_type, key_data = public_key.split()[:2]
    address = host if port == 22 else f"[{host}]:{port}"
    return f"{address} {key_type} {key_data}\n"


def start_sshd(workdir: Path, *, sftp_only: bool = False, timeout_s: float = 15.0) -> SshServer:
    if not SSHD.exists():
        raise RuntimeError(f"{SSHD} is missing: apt-get install openssh-server (bin/setup does)")
    workdir.mkdir(parents=True, exist_ok=True)
    host_public = generate_key(workdir / "ssh_host_ed25519_key")
    client_public = generate_key(workdir / "client_ed25519")
    (workdir / "authorized_keys").write_text(client_public + "\n")
    [port] = free_tcp_ports(1)
    (workdir / "known_hosts").write_text(known_hosts_line(LOOPBACK, port, host_public))
    root = workdir / "remote"
    root.mkdir()
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {LOOPBACK}:{port}",
                f"HostKey {workdir / 'ssh_host_ed25519_key'}",
                f"PidFile {workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                "StrictModes no",  # the temp dir's modes are not sshd's business here
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding no",
                "X11Forwarding no",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                # An sftp-only account: every session, exec included, is the SFTP server.
                *(["ForceCommand internal-sftp"] if sftp_only else []),
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log_path = workdir / "sshd.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    server = SshServer(
        host=LOOPBACK,
        port=port,
        username=getpass.getuser(),
        client_key=workdir / "client_ed25519",
        known_hosts=workdir / "known_hosts",
        host_public_key=host_public,
        root=root,
        process=process,
        log_path=log_path,
    )
    try:
        _wait_for_banner(server, timeout_s)
    except BaseException:
        stop_sshd(server)
        raise
    return server


def stop_sshd(server: SshServer, timeout_s: float = 10.0) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def remove_sshd_dir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_banner(server: SshServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"sshd exited with {server.process.returncode}:\n{_tail(server.log_path)}")
        try:
            with socket.create_connection((server.host, server.port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"sshd did not answer on {server.host}:{server.port} in {timeout_s} s:\n{_tail(server.log_path)}"
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
