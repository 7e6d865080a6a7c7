"""Rows and audio for the review console's tests: flagged items with a real Opus file in S3,
and the console itself running under uvicorn on a free loopback port."""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import uvicorn
from archive_factory import ffmpeg_exe
from pipeline_support import rows

from archive_identity import ArchiveVersion
from embedded_services.ports import free_tcp_ports
from resources.results_db import ClassificationRow, ConvertedFile, TranscriptRow

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
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency=330:duration={seconds}:sample_rate=48000",
         "-c:a", "libopus", "-b:a", "32k", "-ac", "1", str(path)],
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
    """What one flagged file should hold; defaults make a plain, harmless item."""

    name: str
    policy: str = "harassment_threats"
    score: float = 0.9
    transcript: str = "first words here second part of the clip third and last part"
    segments: list[dict] = field(default_factory=lambda: [dict(s) for s in SEGMENTS])
    metadata: dict | None = None


def seed_flagged(results_db, object_store, opus: bytes, items: list[FlaggedItem],
                 archive_key: str = "archives/review.tar", model: str = "cope-a-test") -> dict[str, SeededItem]:
    """Flagged, classified files through the pipeline's own writers, with their Opus objects."""
    archive = ArchiveVersion(archive_key, "etag-1", 1, datetime.now(timezone.utc), "review")
    results_db.archives.partitions_for([archive.key])
    results_db.archives.claim(archive, "run-1")
    ids = results_db.audio_files.register_version(
        archive, accepted={i.name: (len(opus), f"sha-{n}") for n, i in enumerate(items)}, rejected={},
        other_failures=[], run_id="run-1",
    ).ids
    converted = []
    for item in items:
        key = f"processed/2026-12-01/{ids[item.name]}.opus"
        info = object_store.put_bytes(key, opus, content_type="audio/ogg")
        converted.append(ConvertedFile(ids[item.name], key, f"s3://{object_store.bucket}/{key}", info.etag, 7.0, len(opus)))
    results_db.audio_files.record_conversions(archive, converted, [], "run-1")
    results_db.model_outputs.store_transcripts(
        archive, [TranscriptRow(ids[i.name], "whisper-test", i.transcript, "en", 0.9, i.segments) for i in items]
    )
    results_db.model_outputs.store_classifications(
        archive,
        [ClassificationRow(ids[i.name], i.policy, model, i.score, True, 0.5, False, None, "v1") for i in items],
        classified_ids=list(ids.values()),
    )
    with_metadata = [i for i in items if i.metadata is not None]
    if with_metadata:
        import json

        def set_metadata(cur) -> None:
            for item in with_metadata:
                cur.execute("UPDATE audio_files SET parquet_metadata = %s::jsonb WHERE id = %s",
                            (json.dumps(item.metadata), ids[item.name]))

        results_db.transaction(set_metadata)
    classified = rows(results_db, "SELECT id, audio_file_id FROM classifications")
    item_of_file = {r["audio_file_id"]: r["id"] for r in classified}
    return {i.name: SeededItem(i.name, ids[i.name], item_of_file[ids[i.name]]) for i in items}


class ConsoleServer:
    """The console app under uvicorn in a thread (the same server `audio-pipeline review` runs)."""

    def __init__(self, app):
        self.port = free_tcp_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "ConsoleServer":
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
