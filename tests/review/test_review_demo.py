"""The demo's console set-up: a login the console accepts, a settings file only its owner
reads, and a demo RA who sees the flagged items; a second run reuses all three."""

from __future__ import annotations

import stat

from review_support import FlaggedItem, db_rows, seed_flagged

from review.demo import DEMO_RA, prepare_demo_console
from review.passwords import verify_password
from review.server import load_env_file


def test_demo_console_is_ready_and_stable_across_runs(
    results_db, object_store, opus_bytes, postgres_server, s3_server, tmp_path
):
    seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem("a.mp3"), FlaggedItem("b.mp3")])
    state = tmp_path / "state"
    first = prepare_demo_console(results_db, postgres_server, s3_server, object_store.bucket, state)
    assert first.waiting_items == 2 and first.username == DEMO_RA
    assert stat.S_IMODE(first.env_file.stat().st_mode) == 0o600
    settings: dict[str, str] = {}
    load_env_file(str(first.env_file), settings)
    assert "user=review_console" in settings["REVIEW_DATABASE_DSN"]
    assert settings["REVIEW_SECURE_COOKIES"] == "false" and settings["S3_BUCKET"] == object_store.bucket

    second = prepare_demo_console(results_db, postgres_server, s3_server, object_store.bucket, state)
    assert second.password == first.password
    (account,) = db_rows(results_db, "SELECT password_hash FROM ra_users WHERE username = %s", (DEMO_RA,))
    assert verify_password(account["password_hash"], first.password)
