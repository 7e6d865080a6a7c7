"""CoPE-A prompt and scorer on a tiny random Gemma-2 + LoRA built on disk (tests/tiny_cope.py).

The scores are meaningless; what is tested is everything around them: the exact prompt,
which logits are read, padding, the shared-prefix cache, truncation, and loading.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_cope import SLIDING_WINDOW, build_tiny_cope
from transformers import AutoTokenizer

from models.cope_prompt import (
    PromptTooLongError,
    build_prompt,
    fit_content,
    prompt_token_count,
)
from models.cope_scorer import (
    SOFTCAP_ATTENTION,
    answer_token_ids,
    bucket_width,
    load_cope_scorer,
    load_count,
    plan_batches,
)
from models.cope_settings import CopeSettings
from models.scoring import PolicyScore

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
    """Reference scores as the model card computes them: each content alone, no padding, no
    prefix cache, the adapter unmerged, eager attention."""
    scorer = load_cope_scorer(
        replace(settings, max_batch_rows=1, prefix_cache=False, merge_adapter=False, attn_implementation="eager")
    )
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


def test_reference_is_the_models_own_last_logits(tiny_cope, tokenizer, one_at_a_time):
    # Independent of the scorer's code: the full PEFT model's logits at the prompt's last token.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter = tiny_cope
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager"), adapter)
    zero, one = answer_token_ids(tokenizer)
    for content, expected in zip(CONTENTS[:3], one_at_a_time):
        ids = tokenizer(build_prompt(POLICY, content), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model.eval()(ids).logits[0, -1, [zero, one]].float()
        assert torch.softmax(logits, -1)[1].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("prefix_cache", [False, True], ids=["padded", "prefix-cache"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("stable_shapes", [False, True], ids=["sorted", "stable-shapes"])
def test_batched_scores_equal_one_at_a_time(settings, one_at_a_time, padding_side, prefix_cache, stable_shapes):
    scorer = load_cope_scorer(
        replace(
            settings,
            max_batch_rows=4,
            padding_side=padding_side,
            prefix_cache=prefix_cache,
            stable_shapes=stable_shapes,
        )
    )
    batched = [s.score for s in scorer.score(POLICY, CONTENTS)]
    assert batched == pytest.approx(one_at_a_time, abs=1e-5)


# --- speed settings keep the scores ---------------------------------------------------------


def test_merged_adapter_scores_like_the_unmerged_one(settings, one_at_a_time):
    merged = load_cope_scorer(replace(settings, merge_adapter=True, attn_implementation="eager"))
    assert not hasattr(merged.model, "peft_config")  # really merged: a plain transformers model
    assert [s.score for s in merged.score(POLICY, CONTENTS)] == pytest.approx(one_at_a_time, abs=1e-5)


def test_softcap_attention_scores_like_eager(settings, one_at_a_time):
    fast = load_cope_scorer(replace(settings, attn_implementation="auto"))
    assert fast.model.config._attn_implementation == SOFTCAP_ATTENTION
    assert [s.score for s in fast.score(POLICY, CONTENTS)] == pytest.approx(one_at_a_time, abs=1e-5)


def test_softcap_attention_keeps_the_soft_cap(settings):
    # With the cap switched off the scores must move, or the test above would not see a dropped cap.
    capped = load_cope_scorer(replace(settings, max_tokens=8191))  # a key of its own: a fresh model
    uncapped = load_cope_scorer(replace(settings, max_tokens=8190))
    uncapped.model.config.attn_logit_softcapping = None
    for layer in uncapped.model.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    a = [s.score for s in capped.score(POLICY, CONTENTS)]
    b = [s.score for s in uncapped.score(POLICY, CONTENTS)]
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-4


def test_sdpa_which_drops_the_soft_cap_is_refused(settings):
    with pytest.raises(ValueError, match="soft-capping"):
        load_cope_scorer(replace(settings, attn_implementation="sdpa"))


# --- stable scores ------------------------------------------------------------------------


def test_a_score_does_not_depend_on_its_neighbours(settings):
    # Small batches and buckets, so the item lands in batches of different company and size.
    scorer = load_cope_scorer(replace(settings, batch_tokens=96, bucket_tokens=16))
    item = CONTENTS[2]
    alone = scorer.score(POLICY, [item])[0].score
    for k in range(len(CONTENTS)):
        company = CONTENTS[:k] + [item] + CONTENTS[k:]
        assert scorer.score(POLICY, company)[k].score == alone  # bitwise, not approximately
    shuffled = CONTENTS[::-1] + [item, item]
    assert scorer.score(POLICY, shuffled)[-1].score == alone


def test_stable_shapes_depend_on_the_item_only():
    rows_for = lambda width: max(1, 100 // width)  # noqa: E731
    lengths = [5, 17, 33, 12, 40, 7, 16, 90, 3]
    shapes = {}
    for batch in plan_batches(lengths, rows_for, bucket_tokens=16, stable_shapes=True):
        assert batch.rows == rows_for(batch.width) >= len(batch.items)
        for i in batch.items:
            shapes[i] = (batch.width, batch.rows)
            assert batch.width == bucket_width(lengths[i], 16) >= lengths[i]
    assert sorted(shapes) == list(range(len(lengths)))
    for i, length in enumerate(lengths):  # alone, an item gets the same shapes
        (alone,) = plan_batches([length], rows_for, bucket_tokens=16, stable_shapes=True)
        assert (alone.width, alone.rows) == shapes[i]


def test_token_budget_sizes_batches_without_stable_shapes():
    lengths = [10, 10, 10, 30, 30, 50]
    batches = plan_batches(lengths, lambda width: 60 // width, bucket_tokens=16, stable_shapes=False)
    assert [b.items for b in batches] == [(0, 1, 2), (3, 4), (5,)]
    assert all(b.rows * b.width <= 60 for b in batches)


def test_prompts_are_longer_than_the_sliding_window(tokenizer):
    # The tiny model's sliding-window layer must really slide for the tests above to cover it.
    assert min(prompt_token_count(tokenizer, build_prompt(POLICY, c)) for c in CONTENTS) > SLIDING_WINDOW


def test_adapter_changes_scores(settings, one_at_a_time):
    base_only = load_cope_scorer(replace(settings, adapter=None, max_batch_rows=1, prefix_cache=False))
    scores = [s.score for s in base_only.score(POLICY, CONTENTS)]
    assert max(abs(a - b) for a, b in zip(scores, one_at_a_time)) > 1e-3


def test_model_names(settings):
    assert load_cope_scorer(settings).model_name == f"cope-a:{settings.adapter}@{settings.base_model}"
    assert load_cope_scorer(replace(settings, adapter=None)).model_name == f"base:{settings.base_model}"


def test_the_classifier_names_its_model_without_importing_torch(tmp_path: Path):
    """The resource, the model-version check and the run's metadata name the CoPE-A model
    (rows record it) long before, or without, loading it: torch must load only with the model."""
    code = (
        "from resources.classifier import PolicyClassifier\nprint(PolicyClassifier(quantization='8bit').model_name())\n"
    )
    log = tmp_path / "importtime.log"  # -X importtime: every module the process imported
    with log.open("w") as stderr:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    assert result.returncode == 0, log.read_text()[-3000:]
    assert result.stdout.strip() == "cope-a:zentropi-ai/cope-a-9b@google/gemma-2-9b+8bit"
    modules = {line.rsplit("|", 1)[-1].strip() for line in log.read_text().splitlines() if "|" in line}
    assert "models.cope_settings" in modules  # the log is the child's own
    assert sorted(m for m in modules if m.split(".")[0] in ("torch", "transformers", "peft")) == []


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
    hook = scorer.decoder.register_forward_pre_hook(
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
    fresh = replace(settings, max_batch_rows=3)  # settings no other test uses
    before = load_count()
    first = load_cope_scorer(fresh)
    again = load_cope_scorer(replace(settings, max_batch_rows=3))  # equal, not identical
    assert again is first
    assert load_count() == before + 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"quantization": "8bit"}, "CUDA"),
        ({"quantization": "3bit"}, "quantization"),
        ({"padding_side": "middle"}, "padding_side"),
        ({"attn_implementation": "fastest"}, "attn_implementation"),
    ],
)
def test_bad_settings_are_clear_errors(settings, bad, message):
    with pytest.raises(ValueError, match=message):
        load_cope_scorer(replace(settings, **bad))
