"""Rows and audio for the review console's tests: flagged items with a real Opus file in S3,
and the console itself running under uvicorn on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path

import uvicorn

from archive_identity import ArchiveVersion
from embedded_services.ports import free_tcp_ports
from policies import load_policies, policy_names
from resources.results_db.classifications import ClassificationRow, keep_policy_texts, record_scores
from resources.results_db.opus_files import ConvertedFile, record_conversions
from resources.results_db.raw_archive import register_members
from resources.results_db.transcripts import TranscriptRow, record_transcripts
from review.server import server_config
from testing.archive_factory import ffmpeg_exe
from testing.pipeline_support import hold
from testing.pipeline_support import rows as db_rows

# Every RA account the tests make signs in with this.
RA_PASSWORD = "correct horse battery"

# Three timed segments over a 7-second file: enough to see the highlight move and to seek.
SEGMENTS = [
    {"start": 0.0, "end": 2.0, "text": "first words here"},
    {"start": 2.0, "end": 4.0, "text": "second part of the clip"},
    {"start": 4.0, "end": 7.0, "text": "third and last part"},
]


def make_opus(path: Path, seconds: float = 7.0) -> bytes:
    """A real Ogg Opus file (libopus, like the pipeline's output) with a tone."""
    subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=330:duration={seconds}:sample_rate=48000",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-ac",
            "1",
            str(path),
        ],
        check=True,
    )
    return path.read_bytes()


@dataclass
class SeededItem:
    name: str
    audio_file_id: int
    item_id: int = 0


@dataclass
class FlaggedItem:
    """What one classified file should hold; defaults make a plain, harmless flagged item.
    flagged=False makes an item only the recall audit sample brings to RAs."""

    name: str
    policy: str = "harassment_threats"
    score: float = 0.9
    transcript: str = "first words here second part of the clip third and last part"
    segments: list[dict] = field(default_factory=lambda: [dict(s) for s in SEGMENTS])
    metadata: dict | None = None
    flagged: bool = True


def seed_flagged(
    results_db,
    object_store,
    opus: bytes,
    items: list[FlaggedItem],
    archive_key: str = "archives/review.tar",
    model: str = "cope-a-test",
) -> dict[str, SeededItem]:
    """Flagged, classified files through the pipeline's own writers, with their Opus objects."""
    assert all(i.flagged == (i.score >= 0.5) for i in items), "flagged is score >= the threshold, 0.5"
    held = hold(results_db, ArchiveVersion(archive_key, "etag-1", 1, datetime.now(UTC), "review"), "run-1")
    ids = register_members(
        held, accepted={i.name: (len(opus), f"sha-{n}") for n, i in enumerate(items)}, rejected={}, other_failures=[]
    ).ids
    converted = []
    for item in items:
        key = f"processed/2026-12-01/{ids[item.name]}.opus"
        info = object_store.put_bytes(key, opus, content_type="audio/ogg")
        converted.append(
            ConvertedFile(ids[item.name], key, f"s3://{object_store.bucket}/{key}", info.etag, 7.0, len(opus))
        )
    record_conversions(held, converted, [])
    record_transcripts(
        held, [TranscriptRow(ids[i.name], "whisper-test", i.transcript, "en", 0.9, i.segments) for i in items], []
    )
    keep_policy_texts(held, {i.policy: ("v1", policy_text(i.policy)) for i in items})
    record_scores(
        held,
        [ClassificationRow(ids[i.name], i.policy, model, i.score, 0.5, False, None, "v1") for i in items],
        list(ids.values()),
        [],
    )
    with_metadata = [i for i in items if i.metadata is not None]
    if with_metadata:
        import json

        def set_metadata(cur) -> None:
            for item in with_metadata:
                cur.execute(
                    "UPDATE audio_files SET parquet_metadata = %s::jsonb WHERE id = %s",
                    (json.dumps(item.metadata), ids[item.name]),
                )

        results_db.transaction(set_metadata)
    rows = db_rows(results_db, "SELECT id, audio_file_id FROM classifications")
    item_of_file = {r["audio_file_id"]: r["id"] for r in rows}
    return {i.name: SeededItem(i.name, ids[i.name], item_of_file[ids[i.name]]) for i in items}


def policy_text(policy: str) -> str:
    """The packaged text for a packaged policy (what the pipeline would have kept), else a stand-in."""
    return load_policies([policy])[policy] if policy in policy_names() else f"Policy text of {policy}."


class ConsoleServer:
    """The console app under uvicorn in a thread, configured as `audio-pipeline review` serves it."""

    def __init__(self, app):
        self.port = free_tcp_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self._server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ConsoleServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the review console did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.app.state.console.store.close()


@contextlib.contextmanager
def console_process(console_dsn: str, object_store, log: Path, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`audio-pipeline review` as an operator starts it (its own process, uvicorn as the
    launcher configures it), on a free port with its output in `log`: the process and its URL
    once it serves; stopped at the end."""
    port = free_tcp_ports(1)[0]
    env = {
        **os.environ,
        "REVIEW_DATABASE_DSN": console_dsn,
        "REVIEW_SECURE_COOKIES": "false",
        "S3_ENDPOINT": object_store.endpoint_url,
        "S3_BUCKET": object_store.bucket,
        "S3_ACCESS_KEY": object_store.access_key,
        "S3_SECRET_KEY": object_store.secret_key,
        **env,
    }
    command = [str(Path(sys.executable).parent / "audio-pipeline"), "review", "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                http(f"{url}/sign-in")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=15)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) without following redirects: what a client that is not a
    browser gets."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def form_body(fields: dict) -> bytes:
    return urllib.parse.urlencode(fields).encode()


def set_cookies(headers) -> dict[str, str]:
    """{name: value} of the Set-Cookie headers of a response."""
    jar = SimpleCookie()
    for header in headers.get_all("Set-Cookie") or []:
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CSRF_FIELD = re.compile(rb'name="csrf_token" value="([^"]+)"')


class RAClient:
    """One browser-less client with its own cookies: signs in through the form (with the
    double-submit token), then GETs and POSTs with the session's CSRF token."""

    def __init__(self, url: str, secure: bool = False):
        self.url, self.secure = url, secure
        self.cookies: dict[str, str] = {}
        self.csrf_token = ""

    @property
    def session_cookie(self) -> str:
        return "__Host-ra_session" if self.secure else "ra_session"

    def _cookie_header(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    def _keep(self, headers) -> None:
        for name, value in set_cookies(headers).items():
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)

    def get(self, path: str, headers: dict | None = None):
        status, response_headers, body = http(self.url + path, headers={**self._cookie_header(), **(headers or {})})
        self._keep(response_headers)
        return status, response_headers, body

    def post(self, path: str, fields: dict | None = None, *, with_token: bool = True, headers: dict | None = None):
        fields = {"csrf_token": self.csrf_token, **(fields or {})} if with_token else dict(fields or {})
        status, response_headers, body = http(
            self.url + path,
            method="POST",
            data=form_body(fields),
            headers={**FORM, **self._cookie_header(), **(headers or {})},
        )
        self._keep(response_headers)
        return status, response_headers, body

    def sign_in(self, username: str, password: str = RA_PASSWORD, headers: dict | None = None) -> int:
        status, _, body = self.get("/sign-in")
        token = CSRF_FIELD.search(body).group(1).decode()
        status, _, _ = self.post(
            "/sign-in",
            {"csrf_token": token, "username": username, "password": password},
            with_token=False,
            headers=headers,
        )
        if status == 303:
            _, _, page = self.get("/queue")  # every page carries the token (the sign-out form)
            self.csrf_token = CSRF_FIELD.search(page).group(1).decode()
        return status


# The research tests' population: 10 flagged items (scores 0.55..0.955) and 40 unflagged ones
# (0.01..0.40) of one policy and model, and the decisions RAs make on them: 8 flagged decided
# (6 violate), 20 audit items decided (2 violate, the two highest-scoring).
POLICY, MODEL = "harassment_threats", "cope-a-test"
FLAGGED = [FlaggedItem(f"flag{n:02d}.mp3", score=round(0.55 + 0.045 * n, 3)) for n in range(10)]
UNFLAGGED = [FlaggedItem(f"quiet{n:02d}.mp3", score=round(0.01 + 0.01 * n, 3), flagged=False) for n in range(40)]
FLAG_DECISIONS = {f"flag{n:02d}.mp3": ("violates" if n >= 4 else "does_not_violate") for n in range(2, 10)}
AUDIT_DECISIONS = {f"quiet{n:02d}.mp3": ("violates" if n >= 38 else "does_not_violate") for n in range(20, 40)}


def signed_in_page(browser, server, username: str):
    """A Chromium page signed in through the form (and nothing served before that)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{server.url}/queue")
    assert page.url.endswith("/sign-in")  # nothing before signing in
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", RA_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/queue")
    return page
