"""Sign-in, sign-out and the checks every other page goes through.

Sessions are server-side: the cookie carries 32 random bytes, the database only their
SHA-256 (ra_sessions), so nothing needs a signing secret and sign-out really ends a session.
Every POST carries the session's CSRF token in a hidden field; the sign-in form, which has
no session yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from review.passwords import verify_password

SIGN_IN_CSRF_COOKIE = "ra_sign_in_csrf"


@dataclass(frozen=True)
class RASession:
    ra_user_id: int
    username: str
    csrf_token: str


def session_cookie_name(secure: bool) -> str:
    # The __Host- prefix makes browsers refuse the cookie unless it is Secure, host-only and
    # Path=/, so a sibling subdomain cannot plant one. Plain-http loopback cannot use it.
    return "__Host-ra_session" if secure else "ra_session"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def current_session(request: Request) -> RASession | None:
    console = request.app.state.console
    token = request.cookies.get(session_cookie_name(console.settings.secure_cookies))
    if not token or len(token) > 200:
        return None
    row = console.store.live_session(_token_hash(token))
    return RASession(row["ra_user_id"], row["username"], row["csrf_token"]) if row else None


def signed_in(*, api: bool = False) -> Callable:
    """Handler decorator: a page without a live session redirects to sign-in; `api` routes
    (audio) answer 401, since a media element cannot follow a sign-in form."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(request: Request) -> Response:
            session = current_session(request)
            if session is None:
                if api:
                    return Response("sign in first", status_code=401, media_type="text/plain")
                return RedirectResponse("/sign-in", status_code=303)
            request.state.ra = session
            return handler(request)

        return wrapper

    return decorate


def csrf_ok(expected: str, sent: object) -> bool:
    return isinstance(sent, str) and bool(sent) and hmac.compare_digest(expected.encode(), sent.encode())


def sign_in_page(request: Request) -> Response:
    token = request.cookies.get(SIGN_IN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = request.app.state.console.render(request, "sign_in.html", {"csrf_token": token, "error": None})
    _set_cookie(request, response, SIGN_IN_CSRF_COOKIE, token, max_age=3600)
    return response


async def sign_in(request: Request) -> Response:
    console = request.app.state.console
    form = await request.form()
    username = str(form.get("username", "")).strip().lower()[:64]
    password = str(form.get("password", ""))[:1024]
    client = request.client.host if request.client else "unknown"
    expected = request.cookies.get(SIGN_IN_CSRF_COOKIE, "")
    if not expected or not csrf_ok(expected, form.get("csrf_token")):
        return Response("invalid form token; reload the sign-in page", status_code=403, media_type="text/plain")
    if console.limiter.blocked(username, client):
        return _sign_in_refused(request, expected, "Too many failed sign-ins. Wait 15 minutes and try again.", 429)
    account = await run_in_threadpool(console.store.account, username)
    # verify_password runs argon2 even for an unknown name: same cost, same answer.
    if not await run_in_threadpool(verify_password, account["password_hash"] if account else None, password):
        console.limiter.record_failure(username, client)
        await asyncio.sleep(console.limiter.delay_s)
        return _sign_in_refused(request, expected, "Wrong user name or password.", 401)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    ttl_s = console.settings.session_hours * 3600
    await run_in_threadpool(console.store.start_session, _token_hash(token), account["id"], csrf, ttl_s)
    response = RedirectResponse("/queue", status_code=303)
    _set_cookie(request, response, session_cookie_name(console.settings.secure_cookies), token, max_age=int(ttl_s))
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path="/")
    return response


def _sign_in_refused(request: Request, csrf: str, message: str, status: int) -> Response:
    return request.app.state.console.render(
        request, "sign_in.html", {"csrf_token": csrf, "error": message}, status_code=status
    )


async def sign_out(request: Request) -> Response:
    console = request.app.state.console
    session = await run_in_threadpool(current_session, request)
    form = await request.form()
    if session is not None:
        if not csrf_ok(session.csrf_token, form.get("csrf_token")):
            return Response("invalid form token", status_code=403, media_type="text/plain")
        token = request.cookies[session_cookie_name(console.settings.secure_cookies)]
        await run_in_threadpool(console.store.end_session, _token_hash(token))
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(session_cookie_name(console.settings.secure_cookies), path="/")
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    secure = request.app.state.console.settings.secure_cookies
    response.set_cookie(name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax")
