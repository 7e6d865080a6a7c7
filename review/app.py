"""The review console as a Starlette app: routes, security headers, cross-site refusal,
error answers and autoescaped templates."""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import anyio.to_thread
import botocore.exceptions
import jinja2
import psycopg2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from review import auth, calibration, pages
from review.audio import AudioSource, s3_client_for
from review.inputs import BadInput
from review.settings import ReviewSettings
from review.sign_in_limiter import SignInLimiter
from review.store import DatabaseBusy, DatabaseUnavailable, ReviewStore

PACKAGE_DIR = Path(str(resources.files("review")))

# No inline script or style anywhere, so the policy can forbid them: even markup that slipped
# past escaping could not run. media-src 'self': audio only through /audio.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Browsers send about 20 request headers. Their total size is bounded by the server (server.py).
MAX_REQUEST_HEADERS = 100


@dataclass
class Console:
    """What every handler needs, on `request.app.state.console`."""

    settings: ReviewSettings
    store: ReviewStore
    audio: AudioSource
    limiter: SignInLimiter
    templates: jinja2.Environment
    argon2_slots: asyncio.Semaphore

    def render(self, request: Request, name: str, context: dict, status_code: int = 200) -> Response:
        ra = getattr(request.state, "ra", None)
        html = self.templates.get_template(name).render(ra=ra, request_path=request.url.path, **context)
        return Response(html, status_code=status_code, media_type="text/html", headers={"Cache-Control": "no-store"})


def template_environment() -> jinja2.Environment:
    # autoescape=True for every template: all text shown comes from uploaded archives.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["score"] = lambda value: "" if value is None else f"{value:.3f}"
    env.filters["seconds"] = lambda value: "" if value is None else f"{int(value) // 60}:{int(value) % 60:02d}"
    env.filters["share"] = lambda value: "" if value is None else f"{float(value):.3f}"
    return env


class SecurityHeaders:
    """Adds the headers above to every response (a pure ASGI middleware: streaming-safe)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeaderCount:
    """Answers 431 to a request with more than MAX_REQUEST_HEADERS headers, before anything
    else reads them (the sign-in limiter, the cookies, the Fetch Metadata)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and len(scope["headers"]) > MAX_REQUEST_HEADERS:
            response = Response("too many request headers", status_code=431, media_type="text/plain")
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class CrossSiteRefusal:
    """Refuses an unsafe request (POST) that the browser says came from another origin
    (Sec-Fetch-Site: cross-site or same-site; a page on another port of this host is
    same-site). Behind the CSRF tokens, this also closes login CSRF from a page that can plant
    cookies on this host. Clients that send no Fetch Metadata (not browsers) pass on to the
    token checks."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            site = dict(scope["headers"]).get(b"sec-fetch-site", b"").decode("latin-1").lower()
            if site in ("cross-site", "same-site"):
                response = Response("cross-site request refused", status_code=403, media_type="text/plain")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _bad_input(request: Request, error: Exception) -> Response:
    assert isinstance(error, BadInput)  # Starlette hands each handler the type it is registered for
    return Response(f"bad request: {error}", status_code=error.status_code, media_type="text/plain")


def _busy(request: Request, error: Exception) -> Response:
    retry = max(1, math.ceil(request.app.state.console.settings.db_wait_s))
    return Response(
        "the console is busy; try again in a moment",
        status_code=503,
        headers={"Retry-After": str(retry)},
        media_type="text/plain",
    )


def _audio_store_error(request: Request, error: Exception) -> Response:
    # The object store refused or failed (throttled, unreachable): the player retries, the
    # page stays up. A missing object is a 404 before this (AudioSource.size).
    return Response(
        "the audio store is unavailable; try again in a moment",
        status_code=503,
        headers={"Retry-After": "2"},
        media_type="text/plain",
    )


def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return Response(str(error.detail), status_code=error.status_code, headers=error.headers, media_type="text/plain")


def build_app(settings: ReviewSettings, *, s3_client=None, limiter: SignInLimiter | None = None) -> Starlette:
    store = ReviewStore(
        settings.database_dsn,
        double_coding_percent=settings.double_coding_percent,
        claim_minutes=settings.claim_minutes,
        max_connections=settings.db_connections,
        wait_s=settings.db_wait_s,
    )
    store.check_role()
    client = s3_client or s3_client_for(settings)
    console = Console(
        settings,
        store,
        AudioSource(client, settings.s3_bucket),
        limiter or SignInLimiter(),
        template_environment(),
        asyncio.Semaphore(settings.argon2_concurrency),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # The worker threads every synchronous handler runs in (Starlette's default is 40): the
        # number the database pool is sized against (settings.py).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        yield

    routes = [
        Route("/", pages.home),
        Route("/sign-in", auth.sign_in_page, methods=["GET"]),
        Route("/sign-in", auth.sign_in, methods=["POST"]),
        Route("/sign-out", auth.sign_out, methods=["POST"]),
        Route("/queue", pages.queue_page),
        Route("/items/{item_id}", pages.item_page),
        Route("/items/{item_id}/claim", pages.claim_item, methods=["POST"]),
        Route("/items/{item_id}/decision", pages.record_decision, methods=["POST"]),
        Route("/items/{item_id}/next", pages.next_item, methods=["POST"]),
        Route("/items/{item_id}/prev", pages.previous_item, methods=["POST"]),
        Route("/audio/{audio_file_id}", pages.audio, methods=["GET", "HEAD"]),
        Route("/search", pages.search_page),
        Route("/stats", pages.stats_page),
        Route("/calibration", calibration.calibration_page),
        Route("/sessions", pages.sessions_page),
        Route("/sessions/end-others", pages.end_other_sessions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(HeaderCount), Middleware(CrossSiteRefusal)],
        lifespan=lifespan,
        exception_handlers={
            BadInput: _bad_input,
            DatabaseBusy: _busy,
            DatabaseUnavailable: _busy,
            psycopg2.OperationalError: _busy,
            botocore.exceptions.BotoCoreError: _audio_store_error,
            botocore.exceptions.ClientError: _audio_store_error,
            HTTPException: _http_error,
        },
    )
    app.state.console = console
    return app
