"""Small probes and messages for `doctor`: a Redis PING without a Redis client library, where a
PostgreSQL DSN points (never its password), and one-line error reasons."""

from __future__ import annotations

import socket
import ssl
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}
# botocore repeats the URL in these messages; the check's line already names the endpoint.
BRIEF_BY_TYPE = {
    "EndpointConnectionError": "could not connect",
    "ConnectTimeoutError": "connection timed out",
    "ReadTimeoutError": "no answer (read timed out)",
}


def short_error(exc: BaseException, limit: int = 200) -> str:
    """The first line of an error, without libpq's "connection to server ... failed:" lead."""
    if type(exc).__name__ in BRIEF_BY_TYPE:
        return BRIEF_BY_TYPE[type(exc).__name__]
    if isinstance(exc, OSError) and exc.strerror:  # "[Errno 111] Connection refused" -> "connection refused"
        return exc.strerror[:1].lower() + exc.strerror[1:]
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "failed: " in text:  # psycopg2: 'connection to server at "h", port p failed: Connection refused'
        text = text.split("failed: ", 1)[1]
        text = text[:1].lower() + text[1:]
    elif code:  # botocore ClientError: the S3 error code says more than the sentence around it
        text = f"{code}: {text.rsplit(': ', 1)[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def postgres_target(dsn: str) -> str:
    """host:port/dbname of a libpq DSN or postgresql:// URL."""
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(dsn)
    return f"{params.get('host', 'localhost')}:{params.get('port', '5432')}/{params.get('dbname', '?')}"


def broker_target(url: str) -> str:
    """host:port of a broker URL, without its credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or DEFAULT_PORTS.get(parts.scheme, '?')}"


def probe_redis(url: str, timeout_s: float) -> str:
    """PING the broker at `url` (AUTH first when the URL has a password); returns a summary.

    A broker that is not Redis (amqp://) only gets a TCP connect: that is all `doctor` can
    say about it without its client library.
    """
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if port is None:
        raise ValueError(f"broker URL with scheme {parts.scheme!r} needs a port")
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        if parts.scheme not in ("redis", "rediss"):
            return f"{host}:{port} reachable ({parts.scheme} broker: TCP connect only)"
        sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host) if parts.scheme == "rediss" else raw
        replies = sock.makefile("rb")
        if parts.password:
            credentials = (
                [unquote(parts.username), unquote(parts.password)] if parts.username else [unquote(parts.password)]
            )
            _command(sock, replies, "AUTH", *credentials)
        answer = _command(sock, replies, "PING")
    if answer != "+PONG":
        raise RuntimeError(f"{host}:{port} answered PING with {answer!r}")
    return f"{host}:{port} answered PONG"


def _command(sock: socket.socket, replies, *words: str) -> str:
    encoded = [w.encode() for w in words]
    sock.sendall(b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded))
    reply = replies.readline().decode(errors="replace").strip()
    if not reply:
        raise ConnectionError("connection closed without a reply")
    if reply.startswith("-"):  # a Redis error reply, e.g. -NOAUTH or -WRONGPASS
        raise RuntimeError(f"Redis error: {reply[1:]}")
    return reply
