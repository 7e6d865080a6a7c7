"""Runs the console under uvicorn: one process, loopback by default (put TLS in front of it,
deploy/README.md)."""

from __future__ import annotations

from collections.abc import MutableMapping

import uvicorn

from review.app import build_app
from review.settings import ReviewSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8040
# The request line and headers together, as nginx allows by default (4 buffers of 8 KiB).
MAX_REQUEST_HEAD_BYTES = 32 * 1024


def server_config(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info") -> uvicorn.Config:
    """How the console is served (the tests use the same). proxy_headers off: uvicorn would
    believe X-Forwarded-For from any loopback peer, i.e. from every local process; the app
    reads the header itself, from REVIEW_TRUSTED_PROXIES only (auth.client_address).
    h11, not httptools: httptools takes headers of any size (a 32 MB header was answered 200,
    and eight at once grew the process by 360 MB); h11 answers 400 and closes the connection
    once a request's head passes MAX_REQUEST_HEAD_BYTES. The header count is capped in the
    app (app.HeaderCount)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        proxy_headers=False,
        server_header=False,
        log_level=log_level,
    )


def serve(settings: ReviewSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    uvicorn.Server(server_config(build_app(settings), host, port)).run()


def load_env_file(path: str, environ: MutableMapping[str, str]) -> None:
    """KEY=VALUE lines (as the demo writes them) into `environ`, without overriding what is set."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                environ.setdefault(key.strip(), value.strip())
