"""Finished work is never undone by a later run's settings, and an item never shows a score
beside text it was not computed from (issue 23 items 6, 8, 9), on real services: SeaweedFS,
PostgreSQL, ffmpeg and the real Whisper base model, the steps run in process.

Each drill measures what the fault table in tests/faults/README.md reports: files lost,
duplicate rows, orphan objects and rows whose object disagrees with them (all 0).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from fault_report import assert_objects_agree, failures, files, record_outcome

from audio_assets import transcripts as transcripts_asset
from definitions import build_definitions
from models.transcriber import Transcript
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber
from testing.archive_factory import build_tar, ffmpeg_exe, make_speech_mp3, make_tone_mp3
from testing.pipeline_support import FULL_JOB, ArchiveRunner, pipeline_resources, rows

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TRANSCRIPTS_AND_SCORES = (
    "SELECT a.original_filename, t.id AS transcript_id, t.model, t.transcript_text, c.id AS score_id, "
    "c.flag_score FROM audio_files a LEFT JOIN transcripts t ON t.audio_file_id = a.id "
    "LEFT JOIN classifications c ON c.audio_file_id = a.id WHERE a.archive_source = %s ORDER BY 1, 2, 5"
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    parts = tmp_path_factory.mktemp("finished-work-clips")
    return {
        "insult": make_speech_mp3(parts / "insult.mp3", "you are a stupid idiot and everyone hates you"),
        "weather": make_speech_mp3(parts / "weather.mp3", "the weather is lovely today in the park"),
    }


def counting_ffmpeg(folder: Path) -> tuple[Path, Path]:
    """(an FFMPEG_BINARY that logs each conversion, then runs the real ffmpeg; its log)."""
    wrapper, log = folder / "ffmpeg-counting", folder / "conversions.log"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *libopus*) echo "$*" >> "{log}" ;; esac\nexec "{ffmpeg_exe()}" "$@"\n')
    wrapper.chmod(0o755)
    log.touch()
    return wrapper, log


def silence_mp3(path: Path, minutes: int) -> Path:
    """`minutes` of 8 kbit/s silence, encoded in one piece (60 KB a minute)."""
    command = [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono"]
    subprocess.run([*command, "-t", str(minutes * 60), "-c:a", "libmp3lame", "-b:a", "8k", str(path)], check=True)
    return path


def objects(object_store) -> dict[str, str]:
    return {o.key: o.etag for o in object_store.iter_objects("processed/")}


# --- item 6: a lower member cap in run config -----------------------------------------------------


def test_a_lower_member_cap_refuses_new_work_and_deletes_nothing(runner, results_db, clips, tmp_path):
    big = make_tone_mp3(tmp_path / "big.mp3", seconds=150)  # 1.2 MB at 64 kbit/s
    assert big.stat().st_size > 1024 * 1024
    key = runner.upload(
        build_tar(
            tmp_path / "batch_lower_cap.tar",
            [("clips/insult.mp3", clips["insult"]), ("clips/weather.mp3", clips["weather"]), ("clips/big.mp3", big)],
        )
    )
    assert runner.run(key, assets=FULL_JOB).success
    before, outputs, stored = (
        files(results_db, key),
        rows(results_db, TRANSCRIPTS_AND_SCORES, (key,)),
        objects(runner.object_store),
    )
    assert {f["status"] for f in before.values()} == {"classified"}

    # The same version run again with raw_archive's member cap lowered to 1 MB in the launchpad.
    lowered = runner.run(key, assets=FULL_JOB, run_config={"ops": {"raw_archive": {"config": {"max_member_mb": 1}}}})
    assert lowered.success
    # Before: big.mp3 `failed`, its transcript and score deleted, its Opus object drained.
    assert files(results_db, key) == before
    assert rows(results_db, TRANSCRIPTS_AND_SCORES, (key,)) == outputs
    assert objects(runner.object_store) == stored
    refusal = failures(results_db, key)[("clips/big.mp3", "archive")]
    assert refusal["error"].startswith("larger than the 1048576 byte limit") and not refusal["retryable"]

    # The cap back at its default: the member is accepted again and its refusal is over.
    assert runner.run(key, assets=FULL_JOB).success
    assert files(results_db, key) == before and failures(results_db, key) == {}
    count = assert_objects_agree(results_db, runner.object_store, key)
    record_outcome(
        "raw_archive's member cap lowered in run config (`max_member_mb: 1`) for a classified archive with a "
        "1.2 MB member",
        "the member refused for new work (an open `archive` row with the reason), its row still `classified` with "
        "the same transcript, score and Opus object (before: row `failed`, transcript and score deleted, object "
        "drained; RA decisions kept the ids of deleted scores); the cap back at 200 MB closed the refusal; "
        f"files lost 0, duplicate rows 0, orphan objects 0 ({count} objects), rows whose object disagrees 0",
    )


# --- item 8: a re-transcription to other text with the same model ----------------------------------


def reviewable(results_db, key: str) -> dict[str, dict]:
    found = rows(
        results_db,
        "SELECT i.original_filename, i.transcript_text, i.flag_score, c.transcript_md5, md5(i.transcript_text) AS shown "
        "FROM reviewable_items i JOIN classifications c ON c.id = i.item_id WHERE i.archive_source = %s",
        (key,),
    )
    return {r["original_filename"]: r for r in found}


def test_a_score_is_never_shown_beside_text_it_was_not_computed_from(runner, results_db, clips, tmp_path, monkeypatch):
    key = runner.upload(
        build_tar(
            tmp_path / "batch_same_model.tar",
            [("clips/insult.mp3", clips["insult"]), ("clips/weather.mp3", clips["weather"])],
        )
    )
    assert runner.run(key, assets=FULL_JOB).success
    assert set(reviewable(results_db, key)) == {"clips/insult.mp3", "clips/weather.mp3"}

    # `retranscribe: true` with the same model gives the insult other text (a decode that is
    # not bit-stable, model files replaced under the same name), and the run ends before
    # classifications scores it (only transcripts materialized, or a later chunk failed).
    transcribe_chunk = transcripts_asset._transcribe_chunk

    def other_text(rows_, *args, **kwargs):
        outcomes = transcribe_chunk(rows_, *args, **kwargs)
        return [
            (row, dataclasses.replace(t, text="have a lovely day") if row["member"] == "clips/insult.mp3" else t)
            if isinstance(t, Transcript)
            else (row, t)
            for row, t in outcomes
        ]

    monkeypatch.setattr(transcripts_asset, "_transcribe_chunk", other_text)
    config = {"ops": {"transcripts": {"config": {"retranscribe": True}}}}
    assert runner.run(key, assets=[dg.AssetKey("transcripts")], run_config=config).success
    shown = reviewable(results_db, key)
    # Before: the insult's old score (flagged) beside "have a lovely day".
    assert all(r["shown"] == r["transcript_md5"] for r in shown.values()), shown
    assert set(shown) == {"clips/weather.mp3"}  # the insult waits for its new score

    monkeypatch.setattr(transcripts_asset, "_transcribe_chunk", transcribe_chunk)
    assert runner.run(key, assets=[dg.AssetKey("classifications")]).success
    shown = reviewable(results_db, key)
    assert set(shown) == {"clips/insult.mp3", "clips/weather.mp3"}
    assert shown["clips/insult.mp3"]["transcript_text"] == "have a lovely day"
    assert all(r["shown"] == r["transcript_md5"] for r in shown.values())
    count = assert_objects_agree(results_db, runner.object_store, key)
    record_outcome(
        "transcript re-made in place with other text by the same model (`retranscribe: true`), the run ending "
        "before classifications",
        "the item left the RA views (`reviewable_items`, so `ra_queue` and the console) until classifications "
        "scored the new text, then came back with it: no item showed a score beside text whose md5 is not the "
        "one it was computed from (before: the old flagged score beside the new text); files lost 0, duplicate "
        f"rows 0, orphan objects 0 ({count} objects), rows whose object disagrees 0",
    )


# --- item 9: a definite transcription failure on a classified file --------------------------------


def test_a_transcription_refusal_never_undoes_a_file_nor_reconverts_it(
    object_store, results_db, instance, tmp_path, models_dir, monkeypatch
):
    """A classified 15-minute file, then a new Whisper model name on GPU hosts capped at 10
    minutes: the file stays classified. A second 15-minute file added in the next version is
    converted, then refused by transcripts (`failed` at stage transcription, its Opus object
    kept). The archive run twice more: ffmpeg converts neither again."""
    wrapper, conversions = counting_ffmpeg(tmp_path)
    monkeypatch.setenv("FFMPEG_BINARY", str(wrapper))

    def runner_with(language: str | None) -> ArchiveRunner:
        transcriber = WhisperTranscriber(model="base-bundled", models_root=str(models_dir), language=language)
        resources = pipeline_resources(
            object_store, results_db, tmp_path / "scratch", transcriber, PolicyClassifier(backend="profanity")
        )
        return ArchiveRunner(build_definitions(resources), instance, object_store, results_db)

    english, detect = runner_with("en"), runner_with(None)
    long, clip = silence_mp3(tmp_path / "long.mp3", minutes=15), make_tone_mp3(tmp_path / "clip.mp3", seconds=2)
    v1 = [("long.mp3", long), ("clip.mp3", clip)]
    key = english.upload(build_tar(tmp_path / "v1" / "batch_long_files.tar", v1))
    assert english.run(key, assets=FULL_JOB).success
    classified = files(results_db, key)
    assert {f["status"] for f in classified.values()} == {"classified"}
    assert len(conversions.read_text().splitlines()) == 2

    # The next version adds a second long file; its run transcribes with a new model name
    # (language detection) on GPU hosts whose cap is 10 minutes.
    later = silence_mp3(tmp_path / "later.mp3", minutes=16)
    assert detect.upload(build_tar(tmp_path / "v2" / "batch_long_files.tar", [*v1, ("later.mp3", later)])) == key
    capped = {"ops": {"transcripts": {"config": {"max_audio_minutes": 10}}}}
    assert detect.run(key, assets=FULL_JOB, run_config=capped).success
    now = files(results_db, key)
    assert (now["long.mp3"]["status"], now["long.mp3"]["opus_path"]) == (
        "classified",
        classified["long.mp3"]["opus_path"],
    )
    assert (now["later.mp3"]["status"], now["later.mp3"]["failed_stage"]) == ("failed", "transcription")
    assert now["later.mp3"]["opus_path"] is not None  # kept for that stage's next try
    refused = failures(results_db, key)
    assert refused[("long.mp3", "transcription")]["error"] == "audio is 15 min, over the 10 min cap (max_audio_minutes)"
    assert (
        refused[("later.mp3", "transcription")]["error"] == "audio is 16 min, over the 10 min cap (max_audio_minutes)"
    )
    assert len(conversions.read_text().splitlines()) == 3  # later.mp3, once
    settled, stored = files(results_db, key), objects(object_store)

    # The archive run twice more, as a requeue or a revert would: nothing converted again.
    for _ in range(2):
        assert detect.run(key, assets=FULL_JOB, run_config=capped).success
    calls = conversions.read_text().splitlines()
    # Before: later.mp3 re-encoded, uploaded and its old object deleted on every run (5 calls).
    assert len(calls) == 3, calls
    assert files(results_db, key) == settled and objects(object_store) == stored
    count = assert_objects_agree(results_db, object_store, key)
    record_outcome(
        "15-minute files refused by `transcripts` (a new Whisper model name, `max_audio_minutes: 10`): one "
        "classified before, one added in the next version; then the archive run twice more",
        "the classified file stayed `classified` with its object, transcript and score; the added one was "
        "converted once, then `failed` at stage transcription with its Opus object kept; ffmpeg ran 3 times in "
        "all and none in the 2 later runs (before: the failed file re-encoded, uploaded and its old object "
        "deleted on every run, 5 conversions); both refusals open at stage `transcription`; files lost 0 (the "
        f"refused file counted as recorded), duplicate rows 0, orphan objects 0 ({count} objects), rows whose "
        "object disagrees 0",
    )
