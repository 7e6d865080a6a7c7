"""One bad file never holds back its archive (issue 22, item 1), on real services in process.

An archive of six good speech clips and three files that make a tool fail every time: one whose
ffmpeg crashes (SIGSEGV), one whose Whisper batch throws, one whose scoring throws. In one run,
the six are classified and each bad file ends `failed` at its own stage with its last reason
"(after 3 attempts)", its tries counted across the step's retries; no step fails, and the
catch-up schedule finds nothing to run again. The Celery-mode drill of the same promise is in
test_celery_bounds.py.
"""

from __future__ import annotations

import time

import pytest
import tool_faults
from fault_report import assert_objects_agree, files, record_outcome

from media.ffmpeg_binary import resolve_ffmpeg
from sensors.schedules import versions_to_catch_up
from testing.pipeline_support import FULL_JOB, rows

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_files_that_always_fail_their_tool_are_their_own_outcome_and_the_others_are_classified(
    runner,
    results_db,
    object_store,
    instance,
    tmp_path,
    monkeypatch,
):
    wrapper, crashes = tool_faults.crashing_ffmpeg(tmp_path, resolve_ffmpeg())
    monkeypatch.setenv("FFMPEG_BINARY", str(wrapper))
    tool_faults.install(monkeypatch.setattr)
    key = runner.upload(tool_faults.archive_with_bad_files(tmp_path / "parts", "batch_bad_files"))

    started = time.monotonic()
    result = runner.run(key, assets=FULL_JOB)
    elapsed = time.monotonic() - started
    assert result.success  # no step failed: each bad file is its own outcome
    restarts = {
        step: sum(1 for e in result.all_events if e.event_type_value == "STEP_RESTARTED" and e.step_key == step)
        for step in ("opus_files", "transcripts", "classifications")
    }
    assert restarts == {"opus_files": 2, "transcripts": 2, "classifications": 2}  # 3 tries of each bad file

    stored = files(results_db, key)
    good = {name: f["status"] for name, f in stored.items() if name not in tool_faults.BAD_CLIPS}
    assert good == {f"clips/good{i}.mp3": "classified" for i in range(6)}
    outcomes = {
        name: (stored[name]["status"], stored[name]["failed_stage"], stored[name]["error"])
        for name in tool_faults.BAD_CLIPS
    }
    assert outcomes == {
        name: ("failed", stage, f"{reason} (after 3 attempts)")
        for name, (stage, reason) in tool_faults.BAD_CLIPS.items()
    }
    assert len(crashes.read_text().splitlines()) == 3  # ffmpeg ran the crashing file 3 times, no more
    open_rows = rows(
        results_db,
        "SELECT original_filename, stage, retryable, attempts FROM processing_failures "
        "WHERE archive_source = %s AND resolved_at IS NULL ORDER BY original_filename",
        (key,),
    )
    assert [(r["original_filename"], r["stage"], r["retryable"], r["attempts"]) for r in open_rows] == [
        ("clips/crash.mp3", "conversion", False, 3),
        ("clips/scorer.mp3", "classification", False, 3),
        ("clips/whisper.mp3", "transcription", False, 3),
    ]
    objects = assert_objects_agree(results_db, object_store, key)  # the crashed file has none
    assert objects == 8
    # Every file has an outcome: the version is processed and catch-up leaves it alone.
    assert key not in {o.key for o in versions_to_catch_up(instance, object_store, results_db)}
    record_outcome(
        "one archive: 6 good clips, 1 whose ffmpeg crashes (SIGSEGV), 1 whose Whisper batch throws, 1 whose "
        "scoring throws, every time (in process)",
        f"run SUCCESS in {elapsed:.0f} s: the 6 good clips classified in the same run; each bad file `failed` at "
        "its own stage with its last reason '(after 3 attempts)', 3 tries each (2 step retries per step), "
        f"ffmpeg ran the crashing file {len(crashes.read_text().splitlines())} times; catch-up finds nothing to "
        f"run; files lost 0, duplicate rows 0, {objects} objects, orphans 0, disagreeing 0",
    )
