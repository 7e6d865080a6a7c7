"""The review console as a Starlette app: routes, security headers and autoescaped templates."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from review import auth, pages
from review.audio import AudioSource, s3_client_for
from review.settings import ReviewSettings
from review.sign_in_limiter import SignInLimiter
from review.store import ReviewStore

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


@dataclass
class Console:
    """What every handler needs, on `request.app.state.console`."""

    settings: ReviewSettings
    store: ReviewStore
    audio: AudioSource
    limiter: SignInLimiter
    templates: jinja2.Environment

    def render(self, request: Request, name: str, context: dict, status_code: int = 200) -> Response:
        ra = getattr(request.state, "ra", None)
        html = self.templates.get_template(name).render(ra=ra, request_path=request.url.path, **context)
        return Response(html, status_code=status_code, media_type="text/html",
                        headers={"Cache-Control": "no-store"})


def template_environment() -> jinja2.Environment:
    # autoescape=True for every template: all text shown comes from uploaded archives.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["score"] = lambda value: "" if value is None else f"{value:.3f}"
    env.filters["seconds"] = lambda value: "" if value is None else f"{int(value) // 60}:{int(value) % 60:02d}"
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


async def _decision(request: Request) -> Response:
    request.state.form = await request.form()
    return await run_in_threadpool(pages.record_decision, request)


def build_app(settings: ReviewSettings, *, s3_client=None, limiter: SignInLimiter | None = None) -> Starlette:
    store = ReviewStore(settings.database_dsn, double_coding_percent=settings.double_coding_percent,
                        claim_minutes=settings.claim_minutes)
    store.check_role()
    client = s3_client or s3_client_for(settings)
    console = Console(settings, store, AudioSource(client, settings.s3_bucket), limiter or SignInLimiter(),
                      template_environment())
    routes = [
        Route("/", pages.home),
        Route("/sign-in", auth.sign_in_page, methods=["GET"]),
        Route("/sign-in", auth.sign_in, methods=["POST"]),
        Route("/sign-out", auth.sign_out, methods=["POST"]),
        Route("/queue", pages.queue_page),
        Route("/items/{item_id:int}", pages.item_page),
        Route("/items/{item_id:int}/decision", _decision, methods=["POST"]),
        Route("/items/{item_id:int}/{direction:str}", pages.neighbour_item),
        Route("/audio/{audio_file_id:int}", pages.audio, methods=["GET", "HEAD"]),
        Route("/search", pages.search_page),
        Route("/stats", pages.stats_page),
        Mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
    app.state.console = console
    return app
