"""CoPE-A prompt and scorer on a tiny random Gemma-2 + LoRA built on disk (testing/tiny_cope.py).

The scores are meaningless; what is tested is everything around them: the exact prompt, which
logits are read, the scorer's own forward pass (prefix attention with soft-capping and a
sliding window) against transformers' eager model, tokenizing, stable scores, out-of-memory
recovery, truncation and loading.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import subprocess
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from models import cope_scorer
from models.cope_prompt import (
    PromptTooLongError,
    build_prompt,
    fit_content,
    prompt_token_count,
)
from models.cope_scorer import (
    CopeScorer,
    answer_token_ids,
    attention_masks,
    bucket_width,
    load_cope_scorer,
    load_count,
    plan_batches,
    prefix_attention,
)
from models.cope_settings import CopeSettings
from models.scoring import PolicyScore
from testing.tiny_cope import SLIDING_WINDOW, build_tiny_cope

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


def model_card_scores(tiny_cope, tokenizer, contents, adapter=True) -> list[float]:
    """As the model card computes them, without the scorer's code: transformers' eager model
    (PEFT adapter unmerged), each whole prompt alone, the last position's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter_dir = tiny_cope
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")
    model = (PeftModel.from_pretrained(model, adapter_dir) if adapter else model).eval()
    zero, one = answer_token_ids(tokenizer)
    scores = []
    for content in contents:
        ids = tokenizer(build_prompt(POLICY, content), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1, [zero, one]].float()
        scores.append(torch.softmax(logits, -1)[1].item())
    return scores


@pytest.fixture(scope="module")
def one_at_a_time(tiny_cope, tokenizer) -> list[float]:
    return model_card_scores(tiny_cope, tokenizer, CONTENTS)


def batch_shapes(monkeypatch, scorer: CopeScorer) -> list[tuple[tuple[int, ...], int]]:
    """(items, width) of every batch the scorer runs from now on."""
    shapes: list[tuple[tuple[int, ...], int]] = []
    run_rows = CopeScorer._run_rows

    def spy(self, items, width, *args):
        shapes.append((tuple(items), width))
        return run_rows(self, items, width, *args)

    monkeypatch.setattr(CopeScorer, "_run_rows", spy)
    return shapes


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


# --- the scorer's forward pass against transformers' eager model ----------------------------


def test_reference_scores_differ_between_contents(one_at_a_time):
    # Otherwise "the scorer equals the reference" below would prove little.
    assert max(one_at_a_time) - min(one_at_a_time) > 1e-2


@pytest.mark.parametrize("merge_adapter", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("batch_tokens", [48, 1024], ids=["one-row-batches", "wide-batches"])
def test_scores_equal_the_model_card_one_at_a_time(settings, one_at_a_time, merge_adapter, batch_tokens):
    scorer = load_cope_scorer(replace(settings, merge_adapter=merge_adapter, batch_tokens=batch_tokens))
    assert hasattr(scorer.model, "peft_config") != merge_adapter  # merged: a plain transformers model
    assert [s.score for s in scorer.score(POLICY, CONTENTS)] == pytest.approx(one_at_a_time, abs=1e-5)


def eager_reference(q, k, v, prefix, lengths, window, scaling, softcap):
    """transformers' eager Gemma-2 attention, row by row: the prefix's keys and values copied in
    front of the row's own, a 4-D mask from absolute positions (causal, sliding window)."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    rows, width, heads, dim = q.shape
    start = prefix[0].shape[1]
    module = torch.nn.Module()
    module.num_key_value_groups = heads // k.shape[2]
    out = torch.zeros(rows, width, heads * dim)
    for r, length in enumerate(lengths):
        keys = torch.cat([prefix[0], k[r, :length].transpose(0, 1)], 1)[None]
        values = torch.cat([prefix[1], v[r, :length].transpose(0, 1)], 1)[None]
        position = torch.arange(start + length)
        query_position = position[start:, None]
        visible = position[None, :] <= query_position
        if window:
            visible &= position[None, :] > query_position - window
        mask = torch.zeros(visible.shape).masked_fill(~visible, -math.inf)[None, None]
        query = q[r, :length].transpose(0, 1)[None]
        got, _ = eager_attention_forward(module, query, keys, values, mask, scaling=scaling, softcap=softcap)
        out[r, :length] = got[0].reshape(length, heads * dim)
    return out


@pytest.mark.parametrize("window", [None, 8, 24, 400], ids=["global", "window-8", "window-24", "window-400"])
def test_prefix_attention_equals_eager_soft_capped_attention(window):
    torch.manual_seed(0)
    rows, width, heads, kv_heads, dim, start = 3, 16, 4, 2, 16, 20
    lengths = [16, 9, 1]  # right-padded rows; padded queries are never read
    # Large enough that scores reach the soft cap (else dropping it would go unseen).
    q, k = torch.randn(rows, width, heads, dim) * 4, torch.randn(rows, width, kv_heads, dim) * 4
    v = torch.randn(rows, width, kv_heads, dim)
    prefix = (torch.randn(kv_heads, start, dim) * 4, torch.randn(kv_heads, start, dim))
    scaling, softcap = dim**-0.5, 5.0
    masks = attention_masks(start, width, window, torch.device("cpu"))
    got = prefix_attention(q, k, v, prefix, masks, scaling, softcap)
    expected = eager_reference(q, k, v, prefix, lengths, window, scaling, softcap)
    for r, length in enumerate(lengths):
        assert torch.allclose(got[r, :length], expected[r, :length], atol=1e-5, rtol=0)
    uncapped = eager_reference(q, k, v, prefix, lengths, window, scaling, None)
    assert (uncapped - expected).abs().max() > 1e-2  # the cap matters here
    if window in (8, 24):  # the window reaches into the prefix for some queries, not all
        assert masks[0] is not None and masks[0].isinf().any() and not masks[0].isinf().all()


def test_dropping_the_soft_cap_moves_the_scores(settings):
    # The scorer reads the cap from the model's config: without it, scores must move.
    capped = load_cope_scorer(settings)
    scorer = CopeScorer(capped.model, capped.tokenizer, settings, "uncapped")
    scorer.softcap = None
    a = [s.score for s in capped.score(POLICY, CONTENTS)]
    b = [s.score for s in scorer.score(POLICY, CONTENTS)]
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-4


def test_no_row_copies_the_prefix(settings, monkeypatch):
    """The prefix K/V of each layer exists once per call, (kv_heads, tokens, dim), and every
    batch's attention gets that very tensor, whatever its row count."""
    scorer = load_cope_scorer(replace(settings, batch_tokens=96))
    seen = []
    attention = cope_scorer.prefix_attention

    def spy(q, k, v, prefix, *args):
        if prefix is not None:
            seen.append((q.shape[0], prefix[0].data_ptr(), tuple(prefix[0].shape)))
        return attention(q, k, v, prefix, *args)

    monkeypatch.setattr(cope_scorer, "prefix_attention", spy)
    scorer.score(POLICY, CONTENTS)
    rows = {r for r, _, _ in seen}
    assert len(rows) > 1  # batches of different row counts
    per_layer = len(scorer.decoder.layers)
    for layer in range(per_layer):
        layer_calls = seen[layer::per_layer]
        assert len({pointer for _, pointer, _ in layer_calls}) == 1
        assert all(shape[0] == scorer.kv_heads for _, _, shape in layer_calls)


# --- stable scores, without filler rows ------------------------------------------------------


def test_a_score_is_bit_identical_alone_among_others_and_at_other_batch_sizes(settings, monkeypatch):
    """Bit for bit, on CPU in float32: the same item alone (one row), at every position among
    the others (batches of 2-6 rows), and under other token budgets (other row counts), while
    no batch runs a filler row. On a GPU the same holds only where the matrix products give a
    row the same bits for any row count (fix_cuda_reductions; bench/gpu/ measures it)."""
    item = CONTENTS[4]
    scorer = load_cope_scorer(replace(settings, batch_tokens=192))
    shapes = batch_shapes(monkeypatch, scorer)
    alone = scorer.score(POLICY, [item])[0].score
    company_rows = set()
    for k in range(len(CONTENTS) + 1):
        company = CONTENTS[:k] + [item] + CONTENTS[k:]
        shapes.clear()
        assert scorer.score(POLICY, company)[k].score == alone  # bitwise, not approximately
        company_rows |= {len(items) for items, _ in shapes if k in items}
        assert sum(len(items) for items, _ in shapes) == len(company)  # every row an item: no filler
    assert company_rows - {1}  # the item really ran in batches of several rows
    for batch_tokens in (48, 96, 4096):
        other = load_cope_scorer(replace(settings, batch_tokens=batch_tokens))
        assert other.score(POLICY, CONTENTS[::-1] + [item] * 3)[-1].score == alone


def test_bf16_scores_are_bit_identical_alone_and_in_company(settings):
    """bfloat16 on CPU: the dtype of a GPU run (the CPU's bf16 kernels, not cuBLAS's)."""
    fp32 = load_cope_scorer(settings)
    model = copy.deepcopy(fp32.model).to(torch.bfloat16)  # a copy: the cached model stays float32
    scorer = CopeScorer(model, fp32.tokenizer, replace(settings, batch_tokens=192), "bf16")
    together = [s.score for s in scorer.score(POLICY, CONTENTS + CONTENTS[::2])]
    alone = [scorer.score(POLICY, [c])[0].score for c in CONTENTS]
    assert together != [s.score for s in fp32.score(POLICY, CONTENTS + CONTENTS[::2])]  # really bf16
    assert together[: len(CONTENTS)] == alone
    assert together[len(CONTENTS) :] == alone[::2]


def test_compiled_scores_are_bit_identical_alone_and_in_company(settings, one_at_a_time):
    """With torch.compile on (inductor's kernels for the norms, MLP and softmax, as on a GPU):
    the same scores, and the same bits alone as in company."""
    scorer = load_cope_scorer(replace(settings, compile_layers="on", batch_tokens=192))
    together = [s.score for s in scorer.score(POLICY, CONTENTS)]
    assert scorer.softmax.compiled is not None  # compiled, not fallen back to the plain ops
    assert together == pytest.approx(one_at_a_time, abs=1e-5)
    assert [scorer.score(POLICY, [c])[0].score for c in CONTENTS[:3]] == together[:3]


def test_cuda_reduction_settings_take_on_this_torch():
    """fix_cuda_reductions on the installed torch (2.8 here: no split-K switch, so its fallback),
    in a process of its own: the settings are process-wide."""
    code = (
        "import os, torch\n"
        "from models.cope_scorer import fix_cuda_reductions\n"
        "fix_cuda_reductions()\n"
        "m = torch.backends.cuda.matmul\n"
        "print(bool(m.allow_bf16_reduced_precision_reduction), bool(m.allow_fp16_reduced_precision_reduction),\n"
        "      m.allow_tf32, torch.are_deterministic_algorithms_enabled(),\n"
        "      torch.utils.deterministic.fill_uninitialized_memory,\n"
        "      os.environ['CUBLAS_WORKSPACE_CONFIG'], os.environ['CUBLASLT_WORKSPACE_SIZE'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUBLAS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "False", "True", "False", ":4096:8", "32768"]


def test_batches_hold_one_width_and_only_items():
    rows_for = lambda width: max(1, 100 // width)  # noqa: E731
    lengths = [5, 17, 33, 12, 40, 7, 16, 90, 3, 30, 31]
    batches = plan_batches(lengths, rows_for, bucket_tokens=16)
    assert sorted(i for b in batches for i in b.items) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch.items) <= rows_for(batch.width)
        assert {bucket_width(lengths[i], 16) for i in batch.items} == {batch.width}
    # A width's items fill its batches in order; only its last batch is short.
    assert [b.items for b in batches if b.width == 32] == [(1, 9, 10)]
    assert [b.items for b in batches if b.width == 16] == [(8, 0, 5, 3, 6)]


def test_out_of_memory_reruns_the_batch_in_halves_without_changing_later_shapes(settings, monkeypatch):
    """A batch that runs out of GPU memory (simulated) is run again in halves once its tensors
    are gone; the scores are the same bits; the next call plans its batches as before."""
    scorer = load_cope_scorer(replace(settings, batch_tokens=1024))
    expected = [s.score for s in scorer.score(POLICY, CONTENTS)]
    shapes = batch_shapes(monkeypatch, scorer)
    scorer.score(POLICY, CONTENTS)
    planned = list(shapes)
    assert any(len(items) > 1 for items, _ in planned)
    forward, failed = CopeScorer._forward, []

    def out_of_memory_once(self, ids, prefix, keep=None):
        if ids.shape[0] > 1 and not failed:
            held = torch.empty(ids.shape[0], 1000)  # what a real failed batch would hold
            failed.append(weakref.ref(held))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if failed:  # the retry: nothing of the failed batch is alive any more
            assert failed[0]() is None
        return forward(self, ids, prefix, keep)

    monkeypatch.setattr(CopeScorer, "_forward", out_of_memory_once)
    gc.disable()  # freed by reference counting alone, as on the worker
    try:
        shapes.clear()
        assert [s.score for s in scorer.score(POLICY, CONTENTS)] == expected
    finally:
        gc.enable()
    assert scorer.last_call.out_of_memory == 1
    split = next(items for items, _ in planned if len(items) > 1)
    half = len(split) // 2
    assert [items for items, _ in shapes if set(items) <= set(split)] == [split, split[:half], split[half:]]
    shapes.clear()
    scorer.score(POLICY, CONTENTS)
    assert shapes == planned and scorer.last_call.out_of_memory == 0


def test_one_row_out_of_memory_is_raised(settings, monkeypatch):
    scorer = load_cope_scorer(replace(settings, batch_tokens=48))

    def out_of_memory(self, ids, prefix, keep=None):
        if prefix is not None:  # the content rows; the policy's prefix runs
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return forward(self, ids, prefix, keep)

    forward = CopeScorer._forward

    monkeypatch.setattr(CopeScorer, "_forward", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="one row"):
        scorer.score(POLICY, ["hi"])


def test_one_host_sync_per_call(settings, monkeypatch):
    """Results stay on the device until the call's end: the only tensor-to-host conversion is
    one tolist() per score() call, whatever its batch count."""
    scorer = load_cope_scorer(replace(settings, batch_tokens=48))
    conversions: list[str] = []
    for name in ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _m=method, _n=name, **k: conversions.append(_n) or _m(self, *a, **k)
        )
    batches = batch_shapes(monkeypatch, scorer)
    scorer.score(POLICY, CONTENTS)
    assert len(batches) > 3 and conversions == ["tolist"]


# --- tokens ---------------------------------------------------------------------------------

TRICKY = ["  leading spaces", "\n\nnewlines first", "=======", "12345", "ünïcödé — “quotes”", "x"]


def test_tails_are_the_whole_prompts_tokens_after_the_prefix(settings, tokenizer):
    """Contents are tokenized without the policy (after a few anchor tokens of the head), and
    the tokens must be exactly the whole prompt's after the cached prefix."""
    scorer = load_cope_scorer(settings)
    head = scorer._head(POLICY)
    tails = scorer._tails(POLICY, head, CONTENTS + TRICKY)
    for content, tail in zip(CONTENTS + TRICKY, tails):
        whole = tokenizer(build_prompt(POLICY, content))["input_ids"]
        assert tail.prefixed and whole[: len(head.prefix)] == head.prefix
        assert tail.ids == whole[len(head.prefix) :]
    assert scorer.last_call.whole_prompts == 0


def test_the_policy_is_tokenized_once_and_contents_in_one_call(settings, monkeypatch):
    scorer = load_cope_scorer(settings)
    calls = []
    real = scorer.tokenizer

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, text, **kwargs):
            calls.append(text)
            return real(text, **kwargs)

    monkeypatch.setattr(scorer, "tokenizer", Counting())
    monkeypatch.setattr(scorer, "_heads", {})
    scorer.score(POLICY, CONTENTS)
    scorer.score(POLICY, CONTENTS[:3])
    assert [type(c).__name__ for c in calls] == ["str", "list", "list"]  # head once, then one batch per call
    assert all(POLICY not in text for batch in calls[1:] for text in batch)


def test_a_content_that_moves_the_cut_is_tokenized_whole(settings, monkeypatch):
    # Anchor tokens that never match stand for a content that changes them: each content is
    # then tokenized as a whole prompt, with the same tokens after the prefix, so the same bits.
    scorer = load_cope_scorer(settings)
    expected = [s.score for s in scorer.score(POLICY, CONTENTS)]
    head = scorer._head(POLICY)
    monkeypatch.setitem(scorer._heads, POLICY, replace(head, anchor_ids=[-1]))
    assert [s.score for s in scorer.score(POLICY, CONTENTS)] == expected
    assert scorer.last_call.whole_prompts == len(CONTENTS)


def test_a_policy_too_short_to_share_runs_whole_prompts(settings, tiny_cope, tokenizer, monkeypatch):
    scorer = load_cope_scorer(settings)
    monkeypatch.setattr(cope_scorer, "PREFIX_SLACK_TOKENS", 10_000)
    monkeypatch.setattr(scorer, "_heads", {})
    got = [s.score for s in scorer.score(POLICY, CONTENTS[:3])]
    assert got == pytest.approx(model_card_scores(tiny_cope, tokenizer, CONTENTS[:3]), abs=1e-5)
    assert scorer.last_call.whole_prompts == 3


def test_prompts_are_longer_than_the_sliding_window(tokenizer):
    # The tiny model's sliding-window layer must really slide for the tests above to cover it.
    assert min(prompt_token_count(tokenizer, build_prompt(POLICY, c)) for c in CONTENTS) > SLIDING_WINDOW


def test_adapter_changes_scores(settings, one_at_a_time):
    base_only = load_cope_scorer(replace(settings, adapter=None))
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


def test_empty_content_is_not_sent_to_the_model(settings, monkeypatch):
    scorer = load_cope_scorer(settings)
    shapes = batch_shapes(monkeypatch, scorer)
    scores = scorer.score(POLICY, ["", "hi", "  \n"])
    assert scorer.score(POLICY, ["", " "]) == [PolicyScore(None, False, "empty transcript")] * 2
    assert scores[0] == scores[2] == PolicyScore(score=None, truncated=False, reason="empty transcript")
    assert scores[1].score is not None
    assert [items for items, _ in shapes] == [(0,)]  # only "hi"; the all-empty call ran nothing


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
        ({"compile_layers": "always"}, "compile_layers"),
        ({"bucket_tokens": 0}, "bucket_tokens"),
    ],
)
def test_bad_settings_are_clear_errors(settings, bad, message):
    with pytest.raises(ValueError, match=message):
        load_cope_scorer(replace(settings, **bad))
