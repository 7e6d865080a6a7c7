"""Start and stop a real PostgreSQL server on a loopback port from the system binaries.

Used by the test fixtures and the local demo; no Dagster import. Clients connect over
TCP to 127.0.0.1 with a password (scram-sha-256), as they would to a production server.

PostgreSQL refuses to run as root, so when this process is root (CI containers) every
server command runs as the OS user `postgres` through `runuser`, and `data_dir` is
owned by that user. Its parent directories must let that user in: a fresh
`tempfile.mkdtemp()` works, pytest's `tmp_path` (mode 0700, owned by root) does not.

Files kept in `data_dir`:
  pgdata/          the cluster (initdb)
  run/             the Unix socket directory
  postgres.log     server output
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

from embedded_services.ports import LOOPBACK, free_tcp_ports, is_port_free

POSTGRES_OS_USER = "postgres"

# Durability traded for speed in throwaway test clusters; the demo keeps the defaults.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

# Unix socket paths are limited to 107 bytes (sun_path), including ".s.PGSQL.<port>".
_MAX_SOCKET_DIR_LENGTH = 90


@dataclass
class LocalPostgres:
    host: str
    port: int
    user: str
    password: str
    data_dir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq key=value DSN, for psycopg2.connect()."""
        fields = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "password": self.password,
            "dbname": dbname,
        }
        return " ".join(f"{key}={_libpq_quote(value)}" for key, value in fields.items())

    def url(self, dbname: str = "postgres") -> str:
        """postgresql:// URL, for SQLAlchemy and dagster-postgres."""
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{quote(dbname, safe='')}"


class PostgresError(RuntimeError):
    """PostgreSQL could not be set up, started or stopped; the message says why."""


@functools.lru_cache(maxsize=1)
def find_postgres_bindir() -> Path:
    """Directory holding initdb/pg_ctl: $POSTGRES_BINDIR, `pg_config --bindir`,
    the newest /usr/lib/postgresql/*/bin (Debian), then PATH."""
    candidates = [os.environ.get("POSTGRES_BINDIR") or ""]
    if shutil.which("pg_config"):
        # Debian's pg_config (libpq-dev) names the server dir even when only the
        # client is installed, so the candidate is checked for initdb below.
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(result.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install the "
        "`postgresql` package (bin/setup does) or set POSTGRES_BINDIR."
    )


def start_postgres(
    data_dir: Path,
    *,
    port: int | None = None,
    user: str = "pipeline",
    password: str = "pipeline",
    durable: bool = True,
    timeout_s: float = 60.0,
) -> LocalPostgres:
    """initdb `data_dir` if new, start the server on 127.0.0.1:`port`, wait for a login.

    `durable=False` turns off fsync and friends: for test clusters only.
    """
    data_dir = Path(data_dir).resolve()
    cluster = data_dir / "pgdata"
    if _is_running(cluster):
        raise PostgresError(f"PostgreSQL already runs from {cluster}; use ensure_postgres() or stop_postgres() first.")
    if port is None:
        port = free_tcp_ports(1)[0]
    elif not is_port_free(port):
        raise PostgresError(f"Cannot start PostgreSQL: port {LOOPBACK}:{port} is already in use.")

    _prepare_data_dir(data_dir)
    if not (cluster / "PG_VERSION").exists():
        _initdb(cluster, user, password, durable)

    settings = {
        "port": str(port),
        "listen_addresses": LOOPBACK,
        "unix_socket_directories": str(_socket_dir(data_dir)),
        **({} if durable else _FAST_SETTINGS),
    }
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    log_path = data_dir / "postgres.log"
    result = _run_as_server_user(
        [
            "pg_ctl",
            "start",
            "-D",
            str(cluster),
            "-l",
            str(log_path),
            "-w",
            "-t",
            str(int(timeout_s)),
            "-o",
            options,
        ],
        check=False,
    )
    server = LocalPostgres(LOOPBACK, port, user, password, data_dir)
    if result.returncode != 0:
        raise PostgresError(
            f"pg_ctl start failed (exit {result.returncode}): {result.stderr.strip()}\n{_log_tail(log_path)}"
        )
    try:
        _check_login(server)
    except psycopg2.Error as error:
        stop_postgres(server)
        raise PostgresError(
            f"PostgreSQL started but refused a password login as {user!r} on "
            f"{LOOPBACK}:{port}: {error}\n{_log_tail(log_path)}"
        ) from error
    return server


def ensure_postgres(
    data_dir: Path,
    port: int,
    *,
    user: str = "pipeline",
    password: str = "pipeline",
    durable: bool = True,
    timeout_s: float = 60.0,
) -> tuple[LocalPostgres, bool]:
    """Reuse the server of `data_dir` if it accepts this login on `port`, else start it.

    Returns the server and whether it was started by this call.
    """
    data_dir = Path(data_dir).resolve()
    server = LocalPostgres(LOOPBACK, port, user, password, data_dir)
    if _is_running(data_dir / "pgdata"):
        try:
            _check_login(server)
            return server, False
        except psycopg2.Error:
            # Running on another port (or hung): restart it where we want it.
            stop_postgres(data_dir)
    return (
        start_postgres(data_dir, port=port, user=user, password=password, durable=durable, timeout_s=timeout_s),
        True,
    )


def create_database(server: LocalPostgres, name: str, *, drop_existing: bool = False) -> str:
    """Create database `name` (if missing) and return its DSN."""
    connection = psycopg2.connect(server.dsn("postgres"), connect_timeout=10)
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            if drop_existing:
                cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        connection.close()
    return server.dsn(name)


def sessions_started(server: LocalPostgres) -> int:
    """Connections the server has accepted so far (this one included), over every database:
    what the benchmarks count, since each one costs a new backend process."""
    connection = psycopg2.connect(server.dsn("postgres"), connect_timeout=10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(sum(sessions), 0) FROM pg_stat_database")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def stop_postgres(server_or_data_dir: LocalPostgres | Path, *, timeout_s: float = 60.0) -> None:
    """`pg_ctl stop -m fast` (rolls back open transactions). No-op if not running."""
    if isinstance(server_or_data_dir, LocalPostgres):
        data_dir = server_or_data_dir.data_dir
    else:
        data_dir = Path(server_or_data_dir).resolve()
    cluster = data_dir / "pgdata"
    if not _is_running(cluster):
        return
    result = _run_as_server_user(
        ["pg_ctl", "stop", "-D", str(cluster), "-m", "fast", "-w", "-t", str(int(timeout_s))],
        check=False,
    )
    if result.returncode != 0 and _is_running(cluster):
        raise PostgresError(f"pg_ctl stop failed: {result.stderr.strip()}")


def restart_postgres(server: LocalPostgres, *, down_s: float = 0.0, durable: bool = True) -> LocalPostgres:
    """Stop the server (`-m fast`: sessions are cut, as in a crash-free failover), stay down
    for `down_s`, and start it again on the same port: for fault drills."""
    stop_postgres(server)
    if down_s:
        time.sleep(down_s)
    return start_postgres(
        server.data_dir, port=server.port, user=server.user, password=server.password, durable=durable
    )


def _prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if not _running_as_root():
        return
    import pwd  # POSIX only, and only needed in this branch

    # Only the top directory: everything below it is created by the server user.
    account = pwd.getpwnam(POSTGRES_OS_USER)
    os.chown(data_dir, account.pw_uid, account.pw_gid)
    reachable = _run_as_server_user(["test", "-w", str(data_dir)], check=False, bindir=False)
    if reachable.returncode != 0:
        raise PostgresError(
            f"PostgreSQL runs as OS user {POSTGRES_OS_USER!r} when started by root, and that "
            f"user cannot reach {data_dir}: a parent directory is closed to it. Use a "
            "directory that is itself directly under /tmp, such as tempfile.mkdtemp() "
            "(not pytest's tmp_path), or open the parents to that user."
        )


def _initdb(cluster: Path, user: str, password: str, durable: bool) -> None:
    cluster.mkdir(mode=0o700, exist_ok=True)
    if _running_as_root():
        shutil.chown(cluster, POSTGRES_OS_USER, POSTGRES_OS_USER)
    # The password travels in a file, never on a command line other users can read.
    pwfile = cluster.parent / ".initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    if _running_as_root():
        shutil.chown(pwfile, POSTGRES_OS_USER, POSTGRES_OS_USER)
    try:
        command = [
            "initdb",
            "-D",
            str(cluster),
            "-U",
            user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not durable:
            command.append("--no-sync")
        result = _run_as_server_user(command, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresError(f"initdb failed (exit {result.returncode}):\n{result.stderr.strip()}")


def _socket_dir(data_dir: Path) -> Path:
    """`data_dir/run`, or a short temporary dir when that path is too long for a socket."""
    socket_dir = data_dir / "run"
    if len(str(socket_dir)) > _MAX_SOCKET_DIR_LENGTH:
        socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
    socket_dir.mkdir(mode=0o700, exist_ok=True)
    if _running_as_root():
        shutil.chown(socket_dir, POSTGRES_OS_USER, POSTGRES_OS_USER)
    return socket_dir


def _check_login(server: LocalPostgres) -> None:
    connection = psycopg2.connect(server.dsn("postgres"), connect_timeout=5)
    connection.close()


def _is_running(cluster: Path) -> bool:
    if not (cluster / "PG_VERSION").exists():
        return False
    # Exit 0: running; 3: not running; 4: no accessible data directory.
    return _run_as_server_user(["pg_ctl", "status", "-D", str(cluster)], check=False).returncode == 0


def _run_as_server_user(command: list[str], *, check: bool, bindir: bool = True) -> subprocess.CompletedProcess:
    if bindir:
        command = [str(find_postgres_bindir() / command[0]), *command[1:]]
    if _running_as_root():
        command = ["runuser", "-u", POSTGRES_OS_USER, "--", *command]
    # cwd=/ : the server user may not be allowed into the caller's cwd (e.g. /root).
    return subprocess.run(command, capture_output=True, text=True, check=check, cwd="/")


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _libpq_quote(value: str) -> str:
    if value and not any(char in value for char in " '\\"):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return f"Last lines of {log_path.name}:\n" + "\n".join(text.splitlines()[-lines:])
