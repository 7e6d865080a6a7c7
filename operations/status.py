"""`audio-pipeline status`: how far each archive has come, from audio_files in PostgreSQL.

A file's status only moves forward (pending -> converted -> transcribed -> classified) or
to failed, so "converted" counts every file that got at least that far.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Any

COLUMNS = ("files", "converted", "transcribed", "classified", "failed")


@dataclass(frozen=True)
class ArchiveProgress:
    archive_key: str
    partition_key: str
    files: int
    converted: int
    transcribed: int
    classified: int
    failed: int

    @property
    def finished(self) -> int:
        """Files with nothing left to do: classified, or failed until someone requeues them."""
        return self.classified + self.failed


def archive_progress(
    results_db, archive: str | None, limit: int
) -> tuple[list[ArchiveProgress], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-archive counts (most recently changed first), open archive-level failures, and the
    versions the catch-up schedule gave up on (sensors/schedules.py)."""
    found = results_db.archives.find(archive) if archive else None
    if archive and found is None:
        return [], [], []
    key = found and found["archive_key"]
    rows = results_db.reports.archive_progress(key, limit)
    progress = [ArchiveProgress(**{k: v for k, v in row.items() if k != "last_change"}) for row in rows]
    return progress, results_db.reports.open_archive_failures(key, limit), results_db.archives.given_up(key, limit)


def render_table(progress: list[ArchiveProgress]) -> list[str]:
    """Plain aligned columns, for pipes, logs and scripts."""
    header = ("archive", "partition", *COLUMNS)
    cells = [(p.archive_key, p.partition_key, *(str(getattr(p, c)) for c in COLUMNS)) for p in progress]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    # Names left-aligned, counts right-aligned.
    return [
        "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip()
        for row in [header, *cells]
    ]


# A file's furthest stage, best first; '.' is what is still pending.
BAR_SEGMENTS = (("#", "classified"), ("=", "transcribed"), ("-", "converted"), ("x", "failed"))


def render_bars(progress: list[ArchiveProgress], width: int = 30) -> list[str]:
    """One stacked progress bar per archive, for a person at a terminal."""
    legend = "  ".join(f"{char} {name}" for char, name in BAR_SEGMENTS) + "  . pending"
    name_width = max((len(p.partition_key) for p in progress), default=0)
    lines = [legend]
    for p in progress:
        percent = 100 * p.finished // p.files if p.files else 100
        lines.append(
            f"{p.partition_key.ljust(name_width)} [{_bar(p, width)}] {percent:3d}% done  {p.files} files: "
            f"{p.converted} converted, {p.transcribed} transcribed, {p.classified} classified, {p.failed} failed"
        )
    return lines


def _bar(p: ArchiveProgress, width: int) -> str:
    # Files counted once, at their furthest stage; cumulative rounding keeps the bar width exact.
    counts = [p.classified, p.transcribed - p.classified, p.converted - p.transcribed, p.failed]
    bar, total = "", 0
    for (char, _), count in zip(BAR_SEGMENTS, counts):
        total += count
        bar += char * (round(width * total / p.files) - len(bar)) if p.files else ""
    return bar.ljust(width, ".")


def render_archive_failures(failures: list[dict[str, Any]]) -> list[str]:
    return [f"archive failed: {f['archive_key']} ({f['stage']}): {f['error']}" for f in failures]


def render_given_up(given_up: list[dict[str, Any]]) -> list[str]:
    """Versions nothing will run again by itself: fix the input and upload it again (the
    sensor requests the new version), or `audio-pipeline requeue` it."""
    return [
        f"catch-up gave up: {g['archive_key']}@{g['etag']} after {g['catchup_attempts']} catch-up run(s), "
        f"on {g['given_up_at'].astimezone(UTC):%Y-%m-%d %H:%M} UTC; upload a fixed version or run `audio-pipeline requeue`"
        for g in given_up
    ]


def run_status(results_db, archive: str | None, limit: int, terminal: bool) -> int:
    progress, failures, given_up = archive_progress(results_db, archive, limit)
    if not progress and not failures and not given_up:
        print(f"no files recorded{f' for {archive!r}' if archive else ''} yet")
        return 1 if archive else 0  # a named archive that is unknown is most likely a typo
    lines = render_bars(progress) if terminal else render_table(progress)
    print("\n".join(lines + render_archive_failures(failures) + render_given_up(given_up)))
    return 0
