"""CoPE-A prompt and scorer on a tiny random Gemma-2 + LoRA built on disk (tests/tiny_cope.py).

The scores are meaningless; what is tested is everything around them: the exact prompt,
which logits are read, padding, the shared-prefix cache, truncation, and loading.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tiny_cope import SLIDING_WINDOW, build_tiny_cope
from transformers import AutoTokenizer

from audio_assets.ml.cope_prompt import (
    PromptTooLongError,
    build_prompt,
    fit_content,
    prompt_token_count,
)
from audio_assets.ml.cope_scorer import (
    CopeSettings,
    answer_token_ids,
    load_cope_scorer,
    load_count,
)
from audio_assets.ml.scoring import PolicyScore

POLICY = (
    "# Insults\n\n## Definition of Labels\n\n### (IN) Insult\n\n#### Includes\n\n"
    "- **Name-Calling**: Content that calls a person stupid, an idiot, or a loser.\n"
)
# Varied lengths, from a few tokens to several sliding windows, so padding really happens.
CONTENTS = [
    "hi",
    "you are a stupid idiot and a loser",
    "a recipe for bread: flour, water, salt and time. " * 6,
    "0 1 0 1",
    "Transcripts come from short videos; speech recognition makes mistakes sometimes.",
    "the quick brown fox",
    "Hate speech attacks people for who they are. " * 3,
]


@pytest.fixture(scope="module")
def tiny_cope(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_cope(tmp_path_factory.mktemp("tiny-cope"))


@pytest.fixture(scope="module")
def settings(tiny_cope: tuple[Path, Path]) -> CopeSettings:
    base, adapter = tiny_cope
    return CopeSettings(base_model=str(base), adapter=str(adapter), device="cpu")


@pytest.fixture(scope="module")
def tokenizer(tiny_cope: tuple[Path, Path]):
    return AutoTokenizer.from_pretrained(tiny_cope[0])


@pytest.fixture(scope="module")
def one_at_a_time(settings: CopeSettings) -> list[float]:
    """Reference scores: each content alone, no padding, no prefix cache."""
    scorer = load_cope_scorer(replace(settings, batch_size=1, prefix_cache=False))
    return [scorer.score(POLICY, [content])[0].score for content in CONTENTS]


# --- prompt -------------------------------------------------------------------------------


def test_prompt_is_the_model_card_template():
    # Written out by hand, not built from COPE_TEMPLATE: a golden copy must not share its source.
    expected = (
        "INSTRUCTIONS\n"
        "============\n"
        "\n"
        'Examine the given POLICY and determine if the given CONTENT meets the criteria for ANY of the LABELS. Answer "1" if yes, and "0" if no.\n'
        "\n"
        "\n"
        "POLICY\n"
        "======\n"
        "\n"
        "No insults {ever}.\n"
        "\n"
        "\n"
        "CONTENT\n"
        "=======\n"
        "\n"
        "you idiot\n"
        "\n"
        "\n"
        "ANSWER\n"
        "======\n"
        "\n"
    )
    assert build_prompt("No insults {ever}.", "you idiot") == expected


def test_answer_ids_come_from_the_tokenizer(tokenizer):
    zero, one = answer_token_ids(tokenizer)
    assert (zero, one) == (tokenizer.convert_tokens_to_ids("0"), tokenizer.convert_tokens_to_ids("1"))
    assert zero != one
    # The model answers right after the template: "0"/"1" must be single tokens there too.
    assert tokenizer(build_prompt(POLICY, "x") + "1")["input_ids"][-1] == one


def test_answer_that_is_not_one_token_is_an_error():
    class SplitsDigits:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [7, 8]}

    with pytest.raises(ValueError, match="not 1"):
        answer_token_ids(SplitsDigits())


# --- batching -----------------------------------------------------------------------------


def test_reference_scores_differ_between_contents(one_at_a_time):
    # Otherwise "batched equals one at a time" below would prove nothing.
    assert max(one_at_a_time) - min(one_at_a_time) > 1e-2


@pytest.mark.parametrize("prefix_cache", [False, True], ids=["padded", "prefix-cache"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_scores_equal_one_at_a_time(settings, one_at_a_time, padding_side, prefix_cache):
    scorer = load_cope_scorer(replace(settings, batch_size=4, padding_side=padding_side, prefix_cache=prefix_cache))
    batched = [s.score for s in scorer.score(POLICY, CONTENTS)]
    assert batched == pytest.approx(one_at_a_time, abs=1e-4)


def test_prompts_are_longer_than_the_sliding_window(tokenizer):
    # The tiny model's sliding-window layer must really slide for the tests above to cover it.
    assert min(prompt_token_count(tokenizer, build_prompt(POLICY, c)) for c in CONTENTS) > SLIDING_WINDOW


def test_adapter_changes_scores(settings, one_at_a_time):
    base_only = load_cope_scorer(replace(settings, adapter=None, batch_size=1, prefix_cache=False))
    scores = [s.score for s in base_only.score(POLICY, CONTENTS)]
    assert max(abs(a - b) for a, b in zip(scores, one_at_a_time)) > 1e-3


def test_model_names(settings):
    assert load_cope_scorer(settings).model_name == f"cope-a:{settings.adapter}@{settings.base_model}"
    assert load_cope_scorer(replace(settings, adapter=None)).model_name == f"base:{settings.base_model}"


# --- truncation ---------------------------------------------------------------------------

LONG_CONTENT = "the speaker keeps talking about bread and weather and nothing at all. " * 200


def test_fit_content_truncates_content_never_policy(tokenizer):
    max_tokens = prompt_token_count(tokenizer, build_prompt(POLICY, "")) + 40
    content, truncated = fit_content(tokenizer, POLICY, LONG_CONTENT, max_tokens=max_tokens)
    prompt = build_prompt(POLICY, content)
    assert truncated
    assert POLICY in prompt
    assert LONG_CONTENT.startswith(content) and len(content) < len(LONG_CONTENT)
    # As much as fits, and no more.
    assert max_tokens - 3 <= prompt_token_count(tokenizer, prompt) <= max_tokens


def test_fit_content_leaves_short_content_alone(tokenizer):
    assert fit_content(tokenizer, POLICY, "you idiot", max_tokens=8192) == ("you idiot", False)


def test_policy_that_does_not_fit_is_an_error(tokenizer):
    with pytest.raises(PromptTooLongError, match="policy"):
        fit_content(tokenizer, POLICY * 50, "hi", max_tokens=256)


def test_scorer_records_truncation(settings, tokenizer):
    max_tokens = prompt_token_count(tokenizer, build_prompt(POLICY, "")) + 40
    scorer = load_cope_scorer(replace(settings, max_tokens=max_tokens))
    long, short = scorer.score(POLICY, [LONG_CONTENT, "hi"])
    assert long.truncated and long.score is not None
    assert not short.truncated


# --- empty content, loading ---------------------------------------------------------------


def test_empty_content_is_not_sent_to_the_model(settings):
    scorer = load_cope_scorer(replace(settings, prefix_cache=False))
    batch_sizes = []
    hook = scorer.model.register_forward_pre_hook(
        lambda _module, _args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        scores = scorer.score(POLICY, ["", "hi", "  \n"])
        assert scorer.score(POLICY, ["", " "]) == [PolicyScore(None, False, "empty transcript")] * 2
    finally:
        hook.remove()
    assert scores[0] == scores[2] == PolicyScore(score=None, truncated=False, reason="empty transcript")
    assert scores[1].score is not None
    assert batch_sizes == [1]  # only "hi"; the all-empty call ran nothing


def test_equal_settings_load_once(settings):
    fresh = replace(settings, batch_size=3)  # settings no other test uses
    before = load_count()
    first = load_cope_scorer(fresh)
    again = load_cope_scorer(replace(settings, batch_size=3))  # equal, not identical
    assert again is first
    assert load_count() == before + 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"quantization": "8bit"}, "CUDA"),
        ({"quantization": "3bit"}, "quantization"),
        ({"padding_side": "middle"}, "padding_side"),
    ],
)
def test_bad_settings_are_clear_errors(settings, bad, message):
    with pytest.raises(ValueError, match=message):
        load_cope_scorer(replace(settings, **bad))
