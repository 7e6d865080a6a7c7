"""The CPU demo scorer (alt-profanity-check) and the policy texts that ship with the package."""

from __future__ import annotations

import importlib.metadata

import pytest

from models.profanity_scorer import load_profanity_scorer
from models.scoring import PolicyScore
from policies import load_policies, policy_names

EXPECTED_POLICIES = ["harassment_threats", "hate_speech", "self_harm", "sexual_content", "violent_extremism"]


# --- profanity scorer ---------------------------------------------------------------------


def test_profanity_scores_insult_high_and_neutral_low():
    insult, neutral = load_profanity_scorer().score(
        "profanity", ["you are a stupid idiot", "We walked to the park and the weather was lovely."]
    )
    assert insult.score > 0.9
    assert neutral.score < 0.2
    assert not insult.truncated and insult.reason is None


def test_profanity_model_name_has_the_package_version():
    version = importlib.metadata.version("alt-profanity-check")
    assert load_profanity_scorer().model_name == f"alt-profanity-check-{version}"


def test_profanity_empty_content_is_not_scored():
    scores = load_profanity_scorer().score("profanity", ["", "hello", "   "])
    assert scores[0] == scores[2] == PolicyScore(score=None, truncated=False, reason="empty transcript")
    assert scores[1].score is not None
    assert load_profanity_scorer().score("profanity", []) == []


def test_profanity_scorer_ignores_the_policy():
    scorer = load_profanity_scorer()
    assert scorer.score("hate speech", ["you idiot"]) == scorer.score("self harm", ["you idiot"])


def test_profanity_scorer_is_loaded_once():
    assert load_profanity_scorer() is load_profanity_scorer()


# --- policies -----------------------------------------------------------------------------


def test_all_policies_ship():
    assert policy_names() == EXPECTED_POLICIES
    assert list(load_policies()) == EXPECTED_POLICIES


@pytest.mark.parametrize("name", EXPECTED_POLICIES)
def test_policy_is_a_full_cope_policy(name):
    text = load_policies([name])[name]
    assert 300 <= len(text.split()) <= 800
    for section in (
        "## Overview",
        "## Definition of Terms",
        "## Definition of Labels",
        "#### Includes",
        "#### Excludes",
    ):
        assert section in text, f"{name} lacks {section}"
    assert text.count("\n- **") >= 12  # named criteria and terms, not a one-liner
    # Rough count (English is ~4 characters a token; 3 is pessimistic for Markdown): the
    # policy must leave most of CoPE's 8K context to the transcript.
    assert len(text) / 3 < 2500


def test_load_policies_keeps_the_order_asked():
    assert list(load_policies(["self_harm", "hate_speech"])) == ["self_harm", "hate_speech"]


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown policies \\['spam'\\].*hate_speech"):
        load_policies(["hate_speech", "spam"])
