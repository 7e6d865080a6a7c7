"""Sign-in, sign-out and the checks every other page goes through.

Sessions are server-side: the cookie carries 32 random bytes, the database only their
SHA-256 (ra_sessions), so nothing needs a signing secret and sign-out really ends a session.
A session also ends when its account's password changes or the account is disabled (the
session epoch, migration 015). Every POST carries the session's CSRF token in a hidden field;
the sign-in form, which has no session yet, uses a double-submit cookie instead. Above both,
app.py refuses unsafe requests a browser marks as coming from another site or port
(Fetch Metadata), which is what stops a page on another port of the same host: cookies are
not isolated by port, so it could plant a sign-in cookie of its own.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from review import inputs
from review.passwords import verify_password

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,63}$")  # as ra_users' CHECK
MAX_PASSWORD = 1024
SIGN_IN_REFUSED = "Too many failed sign-ins from here. Wait 15 minutes and try again."


@dataclass(frozen=True)
class RASession:
    ra_user_id: int
    username: str
    csrf_token: str
    role: str
    token_sha256: str

    @property
    def is_lead(self) -> bool:
        return self.role == "lead"


def session_cookie_name(secure: bool) -> str:
    # The __Host- prefix makes browsers refuse the cookie unless it is Secure, host-only and
    # Path=/, so a sibling subdomain cannot plant one. Plain-http loopback cannot use it.
    return "__Host-ra_session" if secure else "ra_session"


def sign_in_cookie_name(secure: bool) -> str:
    return "__Host-ra_sign_in_csrf" if secure else "ra_sign_in_csrf"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def client_address(request: Request) -> str:
    """The client's address for the sign-in limiter and the sessions page. X-Forwarded-For is
    believed only from REVIEW_TRUSTED_PROXIES, read right to left past those proxies: anyone
    else could name any address per request and never be counted."""
    peer = request.client.host if request.client else "unknown"
    trusted = request.app.state.console.settings.trusted_proxies

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if not trusted or not is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # a malformed hop: stop at the last proxy we trust
        client = hop
        if not is_trusted(hop):
            break
    return client


def current_session(request: Request) -> RASession | None:
    console = request.app.state.console
    token = request.cookies.get(session_cookie_name(console.settings.secure_cookies))
    if not token or len(token) > 200:
        return None
    token_sha256 = _token_hash(token)
    row = console.store.live_session(token_sha256)
    if row is None:
        return None
    return RASession(row["ra_user_id"], row["username"], row["csrf_token"], row["role"], token_sha256)


def signed_in(*, api: bool = False, form: bool = False, lead: bool = False) -> Callable:
    """Handler decorator. A page without a live session redirects to sign-in; `api` routes
    (audio) answer 401, since a media element cannot follow a sign-in form. `form`: a POST
    whose urlencoded body (request.state.form) must carry the session's CSRF token, checked
    before the handler runs. `lead`: only for the lead role. The handler itself is a plain
    function run in a worker thread (the store is synchronous psycopg2)."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            session = await run_in_threadpool(current_session, request)
            if session is None:
                if api:
                    return Response("sign in first", status_code=401, media_type="text/plain")
                return RedirectResponse("/sign-in", status_code=303)
            request.state.ra = session
            if form:
                request.state.form = await inputs.read_form(request)
                if not csrf_ok(session.csrf_token, request.state.form.get("csrf_token")):
                    return Response("invalid form token; reload the page", status_code=403, media_type="text/plain")
            if lead and not session.is_lead:
                return request.app.state.console.render(
                    request,
                    "message.html",
                    {
                        "title": "For leads",
                        "message": "This page shows everyone's figures; it is open to the lead role.",
                    },
                    status_code=403,
                )
            return await run_in_threadpool(handler, request)

        return endpoint

    return decorate


def csrf_ok(expected: str, sent: object) -> bool:
    return isinstance(sent, str) and bool(sent) and hmac.compare_digest(expected.encode(), sent.encode())


def sign_in_page(request: Request) -> Response:
    secure = request.app.state.console.settings.secure_cookies
    sent = request.cookies.get(sign_in_cookie_name(secure), "")
    token = sent if re.fullmatch(r"[A-Za-z0-9_-]{43}", sent) else secrets.token_urlsafe(32)
    response = request.app.state.console.render(request, "sign_in.html", {"csrf_token": token, "error": None})
    _set_cookie(request, response, sign_in_cookie_name(secure), token, max_age=3600)
    return response


async def sign_in(request: Request) -> Response:
    console = request.app.state.console
    form = await inputs.read_form(request)
    expected = request.cookies.get(sign_in_cookie_name(console.settings.secure_cookies), "")
    if not expected or not csrf_ok(expected, form.get("csrf_token")):
        return Response("invalid form token; reload the sign-in page", status_code=403, media_type="text/plain")
    username = inputs.text(form.get("username"), "user name", max_length=64).strip().lower()
    password = inputs.text(form.get("password"), "password", max_length=MAX_PASSWORD)
    if not USERNAME.match(username):
        raise inputs.BadInput("user name: 2-64 characters from a-z, 0-9, '_', '.', '-'")
    client = client_address(request)
    attempt = console.limiter.begin(username, client)  # counted before the hash is checked
    if attempt is None:
        return _sign_in_refused(request, expected, SIGN_IN_REFUSED, 429)
    account = await run_in_threadpool(console.store.account, username)
    # verify_password runs argon2 even for an unknown name: same cost, same answer.
    verified = await _verify(console, account["password_hash"] if account else None, password)
    if verified is None:
        console.limiter.succeeded(attempt)  # not checked at all: it does not count
        return Response(
            "too many sign-ins at once; try again in a moment",
            status_code=503,
            headers={"Retry-After": "2"},
            media_type="text/plain",
        )
    if not verified:
        await asyncio.sleep(console.limiter.delay_s)
        return _sign_in_refused(request, expected, "Wrong user name or password.", 401)
    console.limiter.succeeded(attempt)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    ttl_s = console.settings.session_hours * 3600
    user_agent = "".join(ch for ch in request.headers.get("user-agent", "")[:256] if ch.isprintable())
    await run_in_threadpool(console.store.start_session, _token_hash(token), account, csrf, ttl_s, client, user_agent)
    response = RedirectResponse("/queue", status_code=303)
    _set_cookie(request, response, session_cookie_name(console.settings.secure_cookies), token, max_age=int(ttl_s))
    _delete_cookie(request, response, sign_in_cookie_name(console.settings.secure_cookies))
    return response


async def _verify(console, password_hash: str | None, password: str) -> bool | None:
    """argon2 in a worker thread, at most settings.argon2_concurrency at once; None when no
    slot came free within the database wait (the caller answers 503)."""
    try:
        await asyncio.wait_for(console.argon2_slots.acquire(), timeout=console.settings.db_wait_s)
    except TimeoutError:
        return None
    try:
        return await run_in_threadpool(verify_password, password_hash, password)
    finally:
        console.argon2_slots.release()


def _sign_in_refused(request: Request, csrf: str, message: str, status: int) -> Response:
    return request.app.state.console.render(
        request, "sign_in.html", {"csrf_token": csrf, "error": message}, status_code=status
    )


async def sign_out(request: Request) -> Response:
    """Only a POST from the signed-in page (its CSRF token) signs out, and the server session
    ends before the cookie is deleted: a forged request changes nothing, and a browser that
    keeps its cookie for any reason holds a dead one."""
    console = request.app.state.console
    session = await run_in_threadpool(current_session, request)
    form = await inputs.read_form(request)
    if session is None or not csrf_ok(session.csrf_token, form.get("csrf_token")):
        return Response("invalid form token; reload the page", status_code=403, media_type="text/plain")
    await run_in_threadpool(console.store.end_session, session.token_sha256)
    response = RedirectResponse("/sign-in", status_code=303)
    _delete_cookie(request, response, session_cookie_name(console.settings.secure_cookies))
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    secure = request.app.state.console.settings.secure_cookies
    response.set_cookie(name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax")


def _delete_cookie(request: Request, response: Response, name: str) -> None:
    # With the attributes it was set with: a browser ignores a deletion of a __Host- cookie
    # that lacks Secure, and would keep the session cookie.
    secure = request.app.state.console.settings.secure_cookies
    response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")
