"""Free TCP ports on the loopback interface, for servers the tests and the demo start."""

from __future__ import annotations

import socket
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"
# Where the demo's services listen, and what AUDIO_PIPELINE_ENV=local connects to by default.
LOCAL_S3_PORT = 8333
LOCAL_POSTGRES_PORT = 54329


def free_tcp_ports(count: int) -> list[int]:
    """Return `count` distinct ports that are free on 127.0.0.1 right now.

    All sockets stay open until every port is chosen, so the kernel never hands out
    the same port twice in one call. Another process can still take a port before
    the server binds it; callers that start servers surface that as a start error.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def is_port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers (Go, PostgreSQL) set SO_REUSEADDR, so connections of a stopped
        # server left in TIME_WAIT do not stop them binding; match that here.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True
