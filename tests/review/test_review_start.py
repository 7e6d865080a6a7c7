"""`audio-pipeline review` starts the console without importing Dagster or torch: the console
host needs neither, and importing them costs seconds and gigabytes."""

from __future__ import annotations

from pathlib import Path

from review_support import console_process, http

HEAVY = ("dagster", "torch", "whisperx", "transformers", "pandas")


def test_review_starts_and_serves_without_dagster_or_torch(console_dsn, object_store, tmp_path: Path):
    log = tmp_path / "console.log"  # with -X importtime: every module the process imported
    with console_process(console_dsn, object_store, log, PYTHONPROFILEIMPORTTIME="1") as (_, url):
        status, _, body = http(f"{url}/sign-in")
        assert status == 200 and b"Sign in" in body

    modules = {line.rsplit("|", 1)[-1].strip() for line in log.read_text().splitlines() if "|" in line}
    assert "review.app" in modules and "s3_client" in modules  # the log is the server's own
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
