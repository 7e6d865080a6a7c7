"""A threshold chosen per policy (review console calibration, issue 17) in the pipeline:
applying it re-flags stored scores with no model call, the next run finds every score current
(the threshold is part of its "already scored" key), and a re-score flags with it. The step
also keeps the policy text each score is computed with (issue 15, item 5)."""

from __future__ import annotations

import pytest
from archive_factory import build_tar, make_speech_mp3
from pipeline_support import FULL_JOB
from pipeline_support import rows as db_rows

from audio_assets.ml import profanity_scorer
from review.calibration import apply_threshold

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
    counts = apply_threshold(results_db, "profanity", insult["model"], threshold, target=0.9)
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
