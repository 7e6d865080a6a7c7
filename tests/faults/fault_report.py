"""Outcomes of the fault drills, printed as a table at the end of the test session.

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
