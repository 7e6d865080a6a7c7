"""transcripts -> classifications on real Whisper base weights, real services, CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import transcriber as transcriber_module
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber
from testing.archive_factory import build_tar, make_speech_mp3, make_tone_mp3
from testing.pipeline_support import FULL_JOB, ArchiveRunner
from testing.pipeline_support import rows as db_rows
from testing.tiny_cope import build_tiny_cope


@pytest.fixture
def speech_archive(tmp_path) -> Path:
    parts = tmp_path / "parts"
    return build_tar(
        tmp_path / "batch_speech.tar.gz",
        [
            ("insult.mp3", make_speech_mp3(parts / "insult.mp3", "you are a stupid idiot and everyone hates you")),
            ("weather.mp3", make_speech_mp3(parts / "weather.mp3", "the weather is lovely today in the park")),
            ("silence.mp3", make_tone_mp3(parts / "silence.mp3", seconds=2.0, freq=0)),
        ],
        gzip=True,
    )


def _db_rows(results_db, key):
    return {
        r["original_filename"]: r
        for r in db_rows(
            results_db,
            """
            SELECT a.original_filename, a.status, t.transcript_text, t.model AS transcript_model, t.confidence,
                   t.segments, c.flag_category, c.flag_score, c.flagged, c.model AS classifier_model, c.reason
            FROM audio_files a
            LEFT JOIN transcripts t ON t.audio_file_id = a.id
            LEFT JOIN classifications c ON c.audio_file_id = a.id
            WHERE a.archive_source = %s
            """,
            (key,),
        )
    }


@pytest.mark.integration
def test_archive_ends_transcribed_classified_and_in_ra_queue(archive_runner, results_db, speech_archive):
    key = archive_runner.upload(speech_archive)
    result = archive_runner.run(key, assets=FULL_JOB)

    assert result.success
    rows = _db_rows(results_db, key)
    assert {r["status"] for r in rows.values()} == {"classified"}
    assert "stupid idiot" in rows["insult.mp3"]["transcript_text"].lower()
    assert rows["insult.mp3"]["flagged"] and rows["insult.mp3"]["flag_category"] == "profanity"
    assert rows["insult.mp3"]["classifier_model"].startswith("alt-profanity-check")
    assert not rows["weather.mp3"]["flagged"]
    assert rows["weather.mp3"]["segments"][0]["end"] > rows["weather.mp3"]["segments"][0]["start"]
    assert 0 < rows["weather.mp3"]["confidence"] <= 1
    # Silence: an empty transcript, never invented text, and not sent to the classifier.
    assert rows["silence.mp3"]["transcript_text"] == ""
    assert rows["silence.mp3"]["flag_score"] is None and not rows["silence.mp3"]["flagged"]
    assert rows["silence.mp3"]["reason"]
    queue = db_rows(
        results_db, "SELECT original_filename, flag_category FROM ra_queue WHERE archive_source = %s", (key,)
    )
    assert queue == [{"original_filename": "insult.mp3", "flag_category": "profanity"}]


@pytest.mark.integration
def test_two_partitions_in_one_process_load_the_model_once(
    build_defs, models_root, instance, object_store, results_db, tmp_path
):
    # batch_size=3: settings no other test uses, so this test's first load is a real load.
    transcriber = WhisperTranscriber(model="base-bundled", models_root=str(models_root), language="en", batch_size=3)
    runner = ArchiveRunner(build_defs(transcriber=transcriber), instance, object_store, results_db)
    loads_before = transcriber_module.load_count()
    for name in ("batch_one", "batch_two"):
        archive = build_tar(
            tmp_path / f"{name}.tar",
            [(f"{name}.mp3", make_speech_mp3(tmp_path / f"{name}.mp3", f"this is {name.replace('_', ' ')}"))],
        )
        assert runner.run(runner.upload(archive), assets=FULL_JOB).success
    assert transcriber_module.load_count() - loads_before == 1


@pytest.fixture(scope="session")
def tiny_cope(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_cope(tmp_path_factory.mktemp("tiny-cope"))


@pytest.mark.integration
def test_cope_backend_scores_every_policy_through_the_production_code_path(
    build_defs, results_db, instance, object_store, tiny_cope, speech_archive
):
    base_dir, adapter_dir = tiny_cope
    # A random tiny model gives arbitrary scores: threshold 0 makes "flagged" deterministic.
    classifier = PolicyClassifier(backend="cope-a", base_model=str(base_dir), adapter=str(adapter_dir), threshold=0.0)
    runner = ArchiveRunner(build_defs(classifier=classifier), instance, object_store, results_db)
    key = runner.upload(speech_archive)
    assert runner.run(key, assets=FULL_JOB).success

    scores = db_rows(
        results_db,
        "SELECT a.original_filename, c.flag_category, c.flag_score, c.flagged, c.model FROM classifications c "
        "JOIN audio_files a ON a.id = c.audio_file_id WHERE a.archive_source = %s",
        (key,),
    )
    policies = set(classifier.categories())
    assert len(policies) >= 5
    spoken = [r for r in scores if r["original_filename"] != "silence.mp3"]
    assert {(r["original_filename"], r["flag_category"]) for r in spoken} == {
        (name, policy) for name in ("insult.mp3", "weather.mp3") for policy in policies
    }
    assert all(0.0 <= r["flag_score"] <= 1.0 and r["flagged"] for r in spoken)
    assert all(r["model"].startswith("cope-a") for r in scores)
    queue = db_rows(results_db, "SELECT count(*) AS n FROM ra_queue WHERE archive_source = %s", (key,))
    assert queue[0]["n"] == len(spoken)
