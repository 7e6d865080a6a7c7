"""A threshold chosen per policy (review console calibration, issue 17) in the pipeline:
applying it re-flags stored scores with no model call, the next run finds every score current
(the threshold is part of its "already scored" key), and a re-score flags with it. The step
also keeps the policy text each score is computed with (issue 15, item 5)."""

from __future__ import annotations

import pytest

from archive_identity import ArchiveVersion
from models import profanity_scorer
from resources.results_db.classifications import ClassificationRow, apply_threshold, record_scores
from resources.results_db.opus_files import ConvertedFile, record_conversions
from resources.results_db.raw_archive import register_members
from resources.results_db.transcripts import TranscriptRow, record_transcripts
from testing.archive_factory import build_tar, make_speech_mp3
from testing.pipeline_support import FULL_JOB, hold
from testing.pipeline_support import rows as db_rows

RESCORE = {"ops": {"classifications": {"config": {"rescore": True}}}}


@pytest.mark.integration
def test_a_per_policy_threshold_reflags_without_model_calls(archive_runner, results_db, tmp_path, monkeypatch):
    archive = build_tar(
        tmp_path / "batch_threshold.tar",
        [
            ("insult.mp3", make_speech_mp3(tmp_path / "insult.mp3", "you are a stupid idiot and everyone hates you")),
            ("weather.mp3", make_speech_mp3(tmp_path / "weather.mp3", "the weather is lovely today in the park")),
        ],
    )
    key = archive_runner.upload(archive)
    assert archive_runner.run(key, assets=FULL_JOB).success
    scores = {
        r["original_filename"]: r
        for r in db_rows(
            results_db,
            (
                "SELECT a.original_filename, c.flag_category, c.model, c.flag_score, c.flagged, c.threshold, c.policy_version,"
                " c.scored_at FROM classifications c JOIN audio_files a ON a.id = c.audio_file_id"
            ),
        )
    }
    insult = scores["insult.mp3"]
    assert insult["flagged"] and insult["threshold"] == 0.5
    (kept,) = db_rows(results_db, "SELECT policy, policy_version FROM policy_texts")
    assert kept == {"policy": "profanity", "policy_version": insult["policy_version"]}

    # Above the insult's score: nothing is flagged any more, and no model ran.
    threshold = (1 + insult["flag_score"]) / 2
    calls = []
    real_score = profanity_scorer.ProfanityScorer.score
    monkeypatch.setattr(
        profanity_scorer.ProfanityScorer,
        "score",
        lambda self, policy, contents: calls.append(len(contents)) or real_score(self, policy, contents),
    )
    counts = apply_threshold(results_db, "profanity", insult["model"], threshold, "set by hand")
    assert counts["no_longer_flagged"] == 1 and counts["flagged"] == 0

    result = archive_runner.run(key, assets=FULL_JOB)
    assert result.success and calls == []
    (materialization,) = [m for m in result.asset_materializations_for_node("classifications")]
    assert materialization.metadata["scored_now"].value == 0
    after = db_rows(results_db, "SELECT flagged, threshold, scored_at FROM classifications ORDER BY id")
    assert {(r["flagged"], r["threshold"]) for r in after} == {(False, threshold)}
    assert {r["scored_at"] for r in after} == {s["scored_at"] for s in scores.values()}

    # Scored again (rescore), the step flags with the policy's threshold, not FLAG_THRESHOLD.
    assert archive_runner.run(key, assets=FULL_JOB, run_config=RESCORE).success
    assert calls  # the model ran this time
    rescored = db_rows(results_db, "SELECT flag_score, flagged, threshold FROM classifications")
    assert all(r["threshold"] == threshold and r["flagged"] == (r["flag_score"] >= threshold) for r in rescored)


@pytest.mark.integration
def test_a_threshold_applied_while_a_step_scores_is_the_one_its_scores_are_flagged_by(results_db):
    """The step read the default threshold (0.5) when it started; an operator applies 0.8 before
    its chunk commits. The chunk's rows are written under the threshold in force at commit, so a
    0.7 is not flagged (before: flagged at the 0.5 the step started with, undoing the apply)."""
    from datetime import UTC, datetime

    held = hold(results_db, ArchiveVersion("archives/t.tar", "e1", 1, datetime.now(UTC), "t"), "run-t")
    ids = register_members(held, accepted={"a.mp3": (1, "a"), "b.mp3": (1, "b")}, rejected={}, other_failures=[]).ids
    record_conversions(
        held, [ConvertedFile(i, f"processed/x/{i}.opus", "s3://b/x", "e", 1.0, 10) for i in ids.values()], []
    )
    record_transcripts(held, [TranscriptRow(i, "m", "words", "en", 0.9, []) for i in ids.values()], [])
    record_scores(held, [ClassificationRow(ids["a.mp3"], "p", "cope", 0.9, 0.5, False, None)], [ids["a.mp3"]], [])

    counts = apply_threshold(results_db, "p", "cope", 0.8, "set by hand")
    assert (counts["scores"], counts["flagged"]) == (1, 1)
    flagged, failed = record_scores(
        held, [ClassificationRow(ids["b.mp3"], "p", "cope", 0.7, 0.5, False, None)], [ids["b.mp3"]], []
    )
    assert flagged == {"p": 0} and failed == []
    stored = db_rows(results_db, "SELECT flag_score, flagged, threshold FROM classifications ORDER BY flag_score")
    assert [(r["flag_score"], r["flagged"], r["threshold"]) for r in stored] == [(0.7, False, 0.8), (0.9, True, 0.8)]
