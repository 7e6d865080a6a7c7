"""Runs the console under uvicorn: one process, loopback by default (put TLS in front of it,
deploy/README.md)."""

from __future__ import annotations

import uvicorn

from review.app import build_app
from review.settings import ReviewSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8040


def serve(settings: ReviewSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    app = build_app(settings)
    # proxy_headers from loopback only: behind Caddy/nginx on the same host the sign-in limiter
    # then sees the client's address, and nobody else can claim another address.
    uvicorn.run(app, host=host, port=port, proxy_headers=True, forwarded_allow_ips="127.0.0.1",
                server_header=False, log_level="info")


def load_env_file(path: str, environ: dict) -> None:
    """KEY=VALUE lines (as the demo writes them) into `environ`, without overriding what is set."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                environ.setdefault(key.strip(), value.strip())
