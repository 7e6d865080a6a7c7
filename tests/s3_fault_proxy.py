"""A fault-injecting HTTP/1.1 reverse proxy for S3 traffic (stdlib asyncio only).

    with S3FaultProxy(s3_server.endpoint_url, fault_rate=0.25, seed=7) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.endpoint_url, ...)
        ...
        proxy.stats.requests, proxy.stats.faults["reset"]

It listens on 127.0.0.1 (a free port) and forwards every request verbatim: method, target,
header lines byte for byte (the Host header too, which SigV4 signs), with bodies streamed in
64 KiB pieces in both directions (Content-Length and chunked), so a 16 MiB part is never held
in memory. Client connections are kept alive; each request gets a fresh upstream connection,
closed once its response has been relayed.

`Expect: 100-continue`: the proxy answers the interim `100 Continue` itself and strips the
Expect header upstream (SigV4 does not sign it), then streams the body. A request that draws
a 500/503 fault is answered at once with the final response (no 100) and `Connection: close`,
as a real server would; the client then does not send the body.

A fraction `fault_rate` of requests (drawn from random.Random(seed)) gets one of `kinds`:
  "500"       answered by the proxy, upstream untouched: 500 <Code>InternalError</Code>
  "503"       likewise: 503 <Code>SlowDown</Code>
  "reset"     the connection is reset (RST) right after the request head, body unread,
              before any response; upstream untouched
  "truncate"  forwarded; the response head and half its body are relayed, then the
              connection is closed. Responses without a body (HEAD, PUT, 204, ...) are
              reset instead, after upstream did the work (counted in `truncate_as_reset`)
  "delay"     forwarded; the response is held `delay_s` seconds before it is relayed
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import urlsplit

FAULT_KINDS = ("500", "503", "reset", "truncate", "delay")
_PIECE = 64 * 1024
_HEAD_LIMIT = 1024 * 1024
_ERRORS = {
    "500": (b"500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": (b"503 Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the counters: requests seen, faults injected per kind."""

    requests: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    truncate_as_reset: int = 0  # "truncate" faults on responses without a body, applied as resets
    continues: int = 0  # interim "100 Continue" responses the proxy sent for Expect: 100-continue

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    @property
    def fault_fraction(self) -> float:
        return self.injected / self.requests if self.requests else 0.0


class _Request:
    def __init__(self, head: bytes):
        lines = head[:-4].split(b"\r\n")
        self.method, self.target, self.version = lines[0].split(b" ", 2)
        self.header_lines = lines[1:]
        self.headers = {}
        for line in self.header_lines:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()

    @property
    def chunked(self) -> bool:
        return b"chunked" in self.headers.get(b"transfer-encoding", b"").lower()

    @property
    def has_body(self) -> bool:
        return self.chunked or int(self.headers.get(b"content-length", b"0")) > 0

    @property
    def expects_continue(self) -> bool:
        return self.headers.get(b"expect", b"").lower() == b"100-continue"

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get(b"connection", b"").lower()
        return self.version == b"HTTP/1.1" and b"close" not in connection

    def upstream_head(self) -> bytes:
        """The request head as received, minus Expect (the proxy answered it)."""
        lines = [line for line in self.header_lines if not line.lower().startswith(b"expect:")]
        return b"\r\n".join([b" ".join((self.method, self.target, self.version)), *lines, b"", b""])


class S3FaultProxy:
    def __init__(
        self,
        upstream_url: str,
        *,
        fault_rate: float = 0.2,
        kinds: Sequence[str] = FAULT_KINDS,
        delay_s: float = 3.0,
        seed: int = 0,
        only: Callable[[str, str], bool] | None = None,
    ):
        """`only(method, path)`: which requests may get a fault (default: all), e.g. only
        the PUTs under processed/ to fail uploads while downloads go through."""
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream_url!r}")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty selection of {FAULT_KINDS}, got {kinds!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.kinds = tuple(kinds)
        self.delay_s = delay_s
        self.only = only
        self.endpoint_url = ""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.set_fault_rate(fault_rate)
        self.reset_stats()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # --- control, from any thread ---------------------------------------------------------

    def set_fault_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {rate}")
        with self._lock:
            self.fault_rate = rate

    def reset_stats(self) -> None:
        with self._lock:
            self._requests = 0
            self._faults = dict.fromkeys(FAULT_KINDS, 0)
            self._truncate_as_reset = 0
            self._continues = 0
            self._seen: list[tuple[str, str]] = []

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(self._requests, dict(self._faults), self._truncate_as_reset, self._continues)

    def requests_seen(self) -> list[tuple[str, str]]:
        """(method, path) of every request since the last reset_stats, in arrival order."""
        with self._lock:
            return list(self._seen)

    def start(self) -> S3FaultProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as error:  # noqa: BLE001 - reported to start()
                failure.append(error)
                ready.set()

        self._thread = threading.Thread(target=run, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise RuntimeError("S3 fault proxy failed to start") from failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- the event loop ---------------------------------------------------------------------

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        tasks: set[asyncio.Task] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            tasks.add(task)
            try:
                await self._client_connection(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                pass  # a broken or garbled connection ends; the client sees it closed
            except asyncio.CancelledError:
                pass  # stop(): ending quietly keeps asyncio from logging the cancellation
            finally:
                tasks.discard(task)
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0, limit=_HEAD_LIMIT)
        self.endpoint_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _draw(self, request: _Request) -> str | None:
        with self._lock:
            self._requests += 1
            self._seen.append((request.method.decode(), urlsplit(request.target.decode()).path))
            eligible = self.only is None or self.only(request.method.decode(), urlsplit(request.target.decode()).path)
            if not eligible or self._rng.random() >= self.fault_rate:
                return None
            kind = self._rng.choice(self.kinds)
            self._faults[kind] += 1
            return kind

    async def _client_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed between requests
            request = _Request(head)
            fault = self._draw(request)
            if fault == "reset":
                _reset(writer)
                return
            if fault in _ERRORS:
                if request.has_body and request.expects_continue:
                    await self._send_error(writer, request, fault, close=True)
                    return
                await _relay_body(reader, None, request.headers, chunked=request.chunked)
                await self._send_error(writer, request, fault, close=not request.keep_alive)
                if not request.keep_alive:
                    return
                continue
            if not await self._forward(reader, writer, request, fault) or not request.keep_alive:
                return

    async def _send_error(self, writer: asyncio.StreamWriter, request: _Request, kind: str, *, close: bool) -> None:
        status, code, message = _ERRORS[kind]
        request_id = f"FAULTPROXY{next(self._ids):08d}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{request.target.decode('latin-1').split('?')[0]}</Resource>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()
        head = (
            b"HTTP/1.1 " + status + b"\r\n"
            b"Content-Type: application/xml\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"x-amz-request-id: " + request_id.encode() + b"\r\n"
            b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
            b"Server: s3-fault-proxy\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
        )
        writer.write(head if request.method == b"HEAD" else head + body)
        await writer.drain()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: _Request, fault: str | None
    ) -> bool:
        """Relay one request and its response; True if the client connection may be reused."""
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=_HEAD_LIMIT)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return False
        try:
            up_writer.write(request.upstream_head())
            if request.expects_continue and request.has_body:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                with self._lock:
                    self._continues += 1
                await writer.drain()
            try:
                await _relay_body(reader, up_writer, request.headers, chunked=request.chunked)
                body_sent = True
            except (ConnectionResetError, BrokenPipeError):
                if reader.exception() is not None or writer.transport.is_closing():
                    raise  # the client went away
                body_sent = False  # upstream answered early and closed; relay its answer
            while True:
                head = await up_reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                if not 100 <= status < 200:
                    break  # an upstream 100 Continue is dropped: the client got one already
            headers = _parse_headers(head)
            no_body = request.method == b"HEAD" or status in (204, 304)
            chunked = not no_body and b"chunked" in headers.get(b"transfer-encoding", b"").lower()
            length = None if no_body or chunked else headers.get(b"content-length")
            if no_body or length == b"0":
                body = "none"
            else:
                body = "chunked" if chunked else ("length" if length is not None else "eof")
            if fault == "truncate" and body == "none":
                with self._lock:
                    self._truncate_as_reset += 1
                _reset(writer)
                return False
            if fault == "delay":
                await asyncio.sleep(self.delay_s)
            writer.write(head)
            if fault == "truncate":
                await _relay_half(up_reader, writer, headers, body)
                return False
            if body == "eof":
                await _relay_exact(up_reader, writer, None)
                return False
            if body != "none":
                await _relay_body(up_reader, writer, headers, chunked=chunked)
            else:
                await writer.drain()
            closing = b"close" in headers.get(b"connection", b"").lower()
            return body_sent and not closing
        finally:
            up_writer.close()


def _parse_headers(head: bytes) -> dict[bytes, bytes]:
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if value:
            headers[name.strip().lower()] = value.strip()
    return headers


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: RST, not FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _relay_exact(src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, count: int | None) -> None:
    """Copy `count` bytes (None: until EOF) from src to dst (None: discard), piece by piece."""
    while count is None or count > 0:
        data = await src.read(_PIECE if count is None else min(_PIECE, count))
        if not data:
            if count is None:
                break
            raise asyncio.IncompleteReadError(b"", count)
        if count is not None:
            count -= len(data)
        if dst is not None:
            dst.write(data)
            await dst.drain()
    if dst is not None:
        await dst.drain()


async def _relay_body(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, headers: dict[bytes, bytes], *, chunked: bool
) -> None:
    """Copy one message body (Content-Length or chunked, framing kept verbatim)."""
    if not chunked:
        await _relay_exact(src, dst, int(headers.get(b"content-length", b"0")))
        return
    while True:
        line = await src.readuntil(b"\r\n")
        if dst is not None:
            dst.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        await _relay_exact(src, dst, size + 2)  # the chunk's data and its CRLF
    while True:  # trailer fields, up to the empty line
        line = await src.readuntil(b"\r\n")
        if dst is not None:
            dst.write(line)
        if line == b"\r\n":
            break
    if dst is not None:
        await dst.drain()


async def _relay_half(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, headers: dict[bytes, bytes], body: str
) -> None:
    """Relay about half of a response body, then the caller closes: a truncated response."""
    if body == "length":
        await _relay_exact(src, dst, int(headers[b"content-length"]) // 2)
    elif body == "chunked":
        line = await src.readuntil(b"\r\n")
        dst.write(line)
        await _relay_exact(src, dst, int(line.split(b";", 1)[0].strip(), 16) // 2)
    else:
        dst.write((await src.read(_PIECE))[: _PIECE // 2])
        await dst.drain()
