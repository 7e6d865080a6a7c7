"""`audio-pipeline review` starts the console without importing Dagster or torch: the console
host needs neither, and importing them costs seconds and gigabytes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from review_support import http

from embedded_services.ports import free_tcp_ports

HEAVY = ("dagster", "torch", "whisperx", "transformers", "pandas")


def test_review_starts_and_serves_without_dagster_or_torch(console_dsn, object_store, tmp_path: Path):
    port = free_tcp_ports(1)[0]
    env = {
        **os.environ,
        "REVIEW_DATABASE_DSN": console_dsn,
        "REVIEW_SECURE_COOKIES": "false",
        "S3_ENDPOINT": object_store.endpoint_url,
        "S3_BUCKET": object_store.bucket,
        "S3_ACCESS_KEY": object_store.access_key,
        "S3_SECRET_KEY": object_store.secret_key,
    }
    imports = tmp_path / "importtime.log"  # -X importtime: every module the process imported
    with imports.open("w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "audio-pipeline"), "review", "--port", str(port)],
            env=env | {"PYTHONPROFILEIMPORTTIME": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, body = http(f"http://127.0.0.1:{port}/sign-in")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, imports.read_text()[-3000:]
                time.sleep(0.2)
        assert status == 200 and b"Sign in" in body
    finally:
        process.terminate()
        process.wait(timeout=15)

    modules = {line.rsplit("|", 1)[-1].strip() for line in imports.read_text().splitlines() if "|" in line}
    assert "review.app" in modules and "s3_client" in modules  # the log is the server's own
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
