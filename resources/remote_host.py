"""The remote host that delivers archives over SFTP (paramiko, key auth, host key checked).

Archives arrive in `remote_dir`; once one is safely in the object store it is moved to
`done_dir`, or, when no done_dir is configured, left in place and recorded in PostgreSQL
(audio_assets/transfer.py). The host key must already be in `known_hosts_path`: an unknown
or changed key is refused (never added), because accepting it would hand the archives,
and the key we log in with, to whoever answers on that address.

No connection outlives a `with`: `session()` opens one SSH connection (one SFTP channel,
plus exec channels for `sha256sum`) and closes it whatever happens inside.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import posixpath
import re
import shlex
import stat
from collections.abc import Iterator
from typing import IO, NamedTuple

import dagster as dg
import paramiko
from pydantic import Field

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ["*.tar", "*.tar.gz", "*.tgz"]
_HASH_BLOCK = 1024 * 1024
_SHA256SUM_LINE = re.compile(r"^\\?([0-9a-f]{64}) ")


class RemoteFile(NamedTuple):
    name: str
    size: int
    mtime: int  # seconds since the epoch, as SFTP reports it
    path: str  # where it is now: remote_dir/name, or done_dir/name once transferred

    @property
    def version(self) -> str:
        """Identifies this content of the file: a replaced file gets a new version."""
        return f"{self.name}@{self.size}@{self.mtime}"


class RemoteHostNotConfigured(RuntimeError):
    """REMOTE_HOST is not set, or its key or known_hosts file is missing."""


class HostKeyRejected(paramiko.SSHException):
    """The server's host key is not the one known_hosts lists for it (or none is listed)."""


class InvalidRemoteName(ValueError):
    """A name that is not a plain archive file name inside remote_dir."""


class _RejectUnknownHostKey(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising an error that names the key and the file to fix."""

    def __init__(self, known_hosts_path: str):
        self.known_hosts_path = known_hosts_path

    def missing_host_key(self, client, hostname, key):
        fingerprint = hashlib.sha256(key.asbytes()).hexdigest()
        raise HostKeyRejected(
            f"{hostname} offered a {key.get_name()} host key (sha256 {fingerprint}) that "
            f"{self.known_hosts_path} does not list; check it out of band, then add it "
            f"(ssh-keyscan -p PORT HOST >> {self.known_hosts_path})"
        )


class RemoteArchiveHost(dg.ConfigurableResource):
    """An SFTP directory that archives are delivered to (REMOTE_HOST and friends)."""

    host: str = Field(default="", description="SSH host name or address; empty = not configured")
    port: int = 22
    username: str = ""
    private_key_path: str = Field(default="~/.ssh/id_ed25519", description="private key to log in with")
    private_key_passphrase: str | None = None
    known_hosts_path: str = Field(
        default="~/.ssh/known_hosts", description="OpenSSH known_hosts that must list the host key"
    )
    remote_dir: str = Field(default=".", description="directory archives arrive in (relative to the login home)")
    done_dir: str | None = Field(
        default=None,
        description="where transferred files are moved (relative to remote_dir unless absolute); "
        "unset: files stay and transfers are recorded in PostgreSQL (remote_transfers)",
    )
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS))
    min_age_s: int = Field(default=60, description="files modified more recently than this may still be being written")
    connect_timeout_s: float = 15.0
    io_timeout_s: float = Field(default=120.0, description="a silent server fails the read after this")
    remote_sha256sum: bool = Field(
        default=True,
        description="hash with `sha256sum` on the host (one read on its disk); off or failing "
        "(sftp-only accounts) the file is streamed and hashed here",
    )
    sha256sum_timeout_s: float = 3600.0

    @property
    def is_configured(self) -> bool:
        return bool(self.host)

    @property
    def address(self) -> str:
        """user@host:port, how transfers are recorded."""
        return f"{self.username}@{self.host}:{self.port}"

    def done_path(self) -> str | None:
        if not self.done_dir:
            return None
        return posixpath.join(self.remote_dir, self.done_dir)

    @contextlib.contextmanager
    def session(self) -> Iterator[RemoteSession]:
        """One SSH connection for several operations; closed on leaving the block."""
        if not self.is_configured:
            raise RemoteHostNotConfigured("REMOTE_HOST is not set; no remote host to transfer archives from")
        known_hosts = os.path.expanduser(self.known_hosts_path)
        key_path = os.path.expanduser(self.private_key_path)
        for what, path in (("known_hosts file", known_hosts), ("private key", key_path)):
            if not os.path.isfile(path):
                raise RemoteHostNotConfigured(
                    f"the {what} {path} does not exist (REMOTE_KNOWN_HOSTS / REMOTE_KEY_PATH)"
                )
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(known_hosts)  # the only keys trusted; system files are not read
            client.set_missing_host_key_policy(_RejectUnknownHostKey(known_hosts))
            try:
                client.connect(
                    self.host,
                    port=self.port,
                    username=self.username,
                    key_filename=key_path,
                    passphrase=self.private_key_passphrase,
                    allow_agent=False,
                    look_for_keys=False,
                    timeout=self.connect_timeout_s,
                    banner_timeout=self.connect_timeout_s,
                    auth_timeout=self.connect_timeout_s,
                )
            except paramiko.BadHostKeyException as error:
                raise HostKeyRejected(
                    f"{self.host}:{self.port} presented a host key that differs from the one in "
                    f"{known_hosts}: refusing to connect (possible man-in-the-middle)"
                ) from error
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.io_timeout_s)
            yield RemoteSession(self, client, sftp)
        finally:
            client.close()

    # One-shot conveniences, each on its own connection.

    def list_archives(self) -> list[RemoteFile]:
        with self.session() as session:
            return session.list_archives()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        with self.session() as session:
            remote = session.stat(name)
            if remote is None:
                raise FileNotFoundError(f"{name} is not in {self.remote_dir}")
            with session.open(remote) as handle:
                yield handle

    def sha256(self, name: str) -> str:
        with self.session() as session:
            remote = session.stat(name)
            if remote is None:
                raise FileNotFoundError(f"{name} is not in {self.remote_dir}")
            return session.sha256(remote)

    def mark_transferred(self, name: str) -> str:
        with self.session() as session:
            remote = session.stat(name)
            if remote is None:
                raise FileNotFoundError(f"{name} is not in {self.remote_dir}")
            return session.mark_transferred(remote)


class RemoteSession:
    """The operations on one open connection (see RemoteArchiveHost.session)."""

    def __init__(self, host: RemoteArchiveHost, client: paramiko.SSHClient, sftp: paramiko.SFTPClient):
        self.host, self.client, self.sftp = host, client, sftp
        self._sha256sum_works = host.remote_sha256sum

    def list_archives(self) -> list[RemoteFile]:
        """Regular files in remote_dir matching the patterns, oldest first."""
        patterns = [p.lower() for p in self.host.patterns]
        found = [
            RemoteFile(attr.filename, attr.st_size, int(attr.st_mtime), self._path(attr.filename))
            for attr in self.sftp.listdir_attr(self.host.remote_dir)
            if stat.S_ISREG(attr.st_mode or 0) and _matches(attr.filename, patterns)
        ]
        return sorted(found, key=lambda f: (f.mtime, f.name))

    def stat(self, name: str) -> RemoteFile | None:
        """The file in remote_dir, else the already moved one in done_dir, else None."""
        check_remote_name(name, self.host.patterns)
        candidates = [self._path(name)]
        if done := self.host.done_path():
            candidates.append(posixpath.join(done, name))
        for path in candidates:
            try:
                attr = self.sftp.stat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(attr.st_mode or 0):
                return RemoteFile(name, attr.st_size, int(attr.st_mtime), path)
        return None

    @contextlib.contextmanager
    def open(self, remote: RemoteFile) -> Iterator[IO[bytes]]:
        """The file for reading front to back, with every 32 KiB read requested ahead.

        Memory stays flat however slow the consumer (an S3 upload) is: paramiko parses
        responses only as the reader consumes them, and SSH flow control stops the server
        once the channel window (2 MiB) is full; measured flat at 512 MiB. Don't pass
        max_concurrent_requests: paramiko then polls every 10 ms and reads at ~9 MB/s
        instead of ~110 MB/s.
        """
        with self.sftp.open(remote.path, "rb") as handle:
            handle.prefetch(remote.size)
            yield handle

    def sha256(self, remote: RemoteFile) -> str:
        """Hex SHA-256 of the file: `sha256sum` on the host when it may run commands,
        otherwise the bytes are streamed here and hashed."""
        if self._sha256sum_works:
            digest = self._sha256sum(remote.path)
            if digest is not None:
                return digest
            self._sha256sum_works = False  # an sftp-only account: don't try again this session
        hasher = hashlib.sha256()
        with self.open(remote) as handle:
            while block := handle.read(_HASH_BLOCK):
                hasher.update(block)
        return hasher.hexdigest()

    def mark_transferred(self, remote: RemoteFile) -> str:
        """Move the file into done_dir (replacing an older copy there); returns the new path.
        A file already in done_dir stays where it is."""
        done = self.host.done_path()
        if done is None:
            raise ValueError("no done_dir configured; transfers are recorded in PostgreSQL instead")
        target = posixpath.join(done, remote.name)
        if remote.path == target:
            return target
        self._ensure_dir(done)
        # posix-rename@openssh.com: atomic, and replaces an older file of the same name.
        self.sftp.posix_rename(remote.path, target)
        return target

    def _sha256sum(self, path: str) -> str | None:
        command = f"sha256sum -b -- {shlex.quote(path)}"
        try:
            stdin, stdout, stderr = self.client.exec_command(command, timeout=self.host.sha256sum_timeout_s)
            stdin.channel.shutdown_write()  # a ForceCommand'ed sftp server would wait for input
            output = stdout.read().decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except paramiko.SSHException as error:  # exec refused by the server
            log.info("sha256sum over SSH unavailable on %s (%s); streaming instead", self.host.address, error)
            return None
        match = _SHA256SUM_LINE.match(output)
        if status != 0 or match is None:
            log.info(
                "sha256sum over SSH failed on %s (exit %s: %s); streaming instead",
                self.host.address,
                status,
                stderr.read().decode("utf-8", "replace").strip()[:200],
            )
            return None
        return match.group(1)

    def _ensure_dir(self, path: str) -> None:
        try:
            self.sftp.mkdir(path)
        except OSError:
            # Already there (SFTP reports it as a generic failure); anything else shows on rename.
            pass

    def _path(self, name: str) -> str:
        return posixpath.join(self.host.remote_dir, name)


def check_remote_name(name: str, patterns: list[str]) -> None:
    """Refuse anything but a plain file name matching the patterns (run config is user input:
    `../../etc/shadow` must not become a path)."""
    if not name or "/" in name or "\0" in name or name in {".", ".."}:
        raise InvalidRemoteName(f"{name!r} is not a plain file name")
    if not _matches(name, [p.lower() for p in patterns]):
        raise InvalidRemoteName(f"{name!r} matches none of {patterns}")


def _matches(name: str, lowered_patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name.lower(), pattern) for pattern in lowered_patterns)
