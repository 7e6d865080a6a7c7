"""Outcomes of the fault drills, printed as a table at the end of the test session, and the audit
every drill reports them with (files lost, duplicate rows, orphan objects, disagreeing rows).

Each drill calls record_outcome(fault, outcome) once it has passed; the rows are appended to
a JSON-lines file (FAULT_REPORT, default: the session's temporary directory) and
tests/faults/conftest.py prints them. tests/faults/README.md holds the last table, measured.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from testing.pipeline_support import rows

REPORT = Path(os.environ.get("FAULT_REPORT") or Path(tempfile.gettempdir()) / "audio-pipeline-fault-report.jsonl")


def record_outcome(fault: str, outcome: str) -> None:
    with REPORT.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"fault": fault, "outcome": outcome, "at": time.time()}) + "\n")


def outcomes() -> list[dict]:
    if not REPORT.exists():
        return []
    return [json.loads(line) for line in REPORT.read_text(encoding="utf-8").splitlines() if line.strip()]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| fault | outcome |", "|---|---|"]
    lines += [f"| {r['fault']} | {r['outcome']} |" for r in rows]
    return "\n".join(lines)


# --- the audit every drill reports: files lost, duplicate rows, orphan objects, disagreeing rows


def files(results_db, key: str) -> dict[str, dict]:
    found = rows(
        results_db,
        "SELECT original_filename, status, error, failed_stage, opus_path, opus_etag, duration_seconds, "
        "parquet_metadata FROM audio_files WHERE archive_source = %s",
        (key,),
    )
    return {r["original_filename"]: r for r in found}


def failures(results_db, key: str, *, open_only: bool = True) -> dict[tuple[str, str], dict]:
    found = rows(
        results_db,
        "SELECT original_filename, stage, error, retryable, resolved_at FROM processing_failures "
        "WHERE archive_source = %s AND (resolved_at IS NULL OR NOT %s)",
        (key, open_only),
    )
    return {(r["original_filename"], r["stage"]): r for r in found}


def orphan_objects(results_db, object_store) -> list[str]:
    """Objects under processed/ that no row points to and no outbox entry records (rows and
    entries of every archive: drills may share a bucket)."""
    pointed = {
        r["opus_path"] for r in rows(results_db, "SELECT opus_path FROM audio_files WHERE opus_path IS NOT NULL")
    }
    queued = {r["object_key"] for r in rows(results_db, "SELECT object_key FROM object_deletions")}
    return sorted(o.key for o in object_store.iter_objects("processed/") if o.key not in pointed | queued)


def assert_objects_agree(results_db, object_store, key: str) -> int:
    """Every row of the archive has its object, with the row's ETag; nothing of the archive is
    left in the outbox; and processed/ holds no orphan (another archive's outbox entries are its
    own drill's to check). Returns how many objects the archive's rows point to."""
    pointed = {r["opus_path"]: r["opus_etag"] for r in files(results_db, key).values() if r["opus_path"]}
    assert orphan_objects(results_db, object_store) == []
    for path, etag in pointed.items():
        head = object_store.head(path)
        assert head is not None and head.etag == etag, (path, head, etag)
    queued_here = rows(results_db, "SELECT object_key FROM object_deletions WHERE archive_source = %s", (key,))
    assert queued_here == [], queued_here
    return len(pointed)
