"""The data layer's boundary: SQL lives in sql/, and only resources/results_db runs it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Statements as they would appear in a Python string: a verb, then what it acts on.
SQL = re.compile(r"\b(SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|VIEW|INDEX))", re.I)
# Allowed: the data-access package, the migrate runner, the embedded server launcher (CREATE
# DATABASE for tests and the demo), and the archive lock (named queries only; checked below).
ALLOWED = {"resources/results_db", "sql", "resources/embedded"}


def python_files(*packages: str):
    for package in packages:
        yield from (REPO / package).rglob("*.py")


def test_no_asset_sensor_check_or_command_builds_sql():
    offenders = []
    for path in python_files("audio_assets", "resources", "sensors"):
        relative = path.relative_to(REPO).as_posix()
        if any(relative.startswith(prefix) for prefix in ALLOWED):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if SQL.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []


def test_data_access_modules_run_only_named_queries():
    """No SQL text inside the data-access modules either: they name queries from sql/queries."""
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in python_files("resources/results_db")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if SQL.search(line)
    ]
    assert offenders == []


def test_there_is_no_public_query_method():
    from resources.results_db import ResultsDatabase

    assert not hasattr(ResultsDatabase, "query")
