"""Prints what the multi-worker tests measured at the end of the session (tests/distributed/README.md
keeps the last table)."""

from __future__ import annotations

import pytest

_OUTCOMES: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def record_outcome():
    """record_outcome(what, outcome): one row of the table printed at the end."""
    return lambda what, outcome: _OUTCOMES.append((what, outcome))


def pytest_terminal_summary(terminalreporter) -> None:
    if _OUTCOMES:
        terminalreporter.section("celery workers")
        for what, outcome in _OUTCOMES:
            terminalreporter.write_line(f"- {what}: {outcome}")
