"""CoPE-A scoring on whatever GPU this runs on: the path before issue 24 against the current
one, in one run on one card, in under five minutes.

No weights on disk: a randomly initialised model of exactly Gemma-2-9B's shape (9.24 B
parameters, bf16) is built straight on the GPU with a LoRA adapter (r=16 on every linear layer,
merged, as the scorer loads it), and a small BPE tokenizer is trained here. Speed does not depend
on weight values. Needs only PyTorch with CUDA, transformers, peft and tokenizers (no Dagster):
on a bare GPU host, `PYTHONPATH=. python3 bench/gpu/bench_cope.py`. `--shape tiny --device cpu`
runs the same code on a two-layer model in seconds (tests/unit/test_gpu_bench.py, in CI).

Prints, for "before" (bench/gpu/cope_before.py: the scorer at 8163a98) and "now"
(models/cope_scorer.py), on ~175-token ("short") and ~800-token ("long") contents:
items/s per policy; the share of the bf16 matrix peak measured in the same run (useful FLOPs
only: padding and filler rows count as waste); the padding share; host syncs per call; the
largest score difference between the two paths and, for --fp32-items items, each path's
against transformers' own model in float32 (what both approximate). Then whether "now" gives
bit-identical scores to an item alone, among 7 random others, in the whole call and under
another token budget (other row counts). Results also go to --out/cope_gpu.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# Before the first cuBLAS call, for both paths alike (the scorer's fix_cuda_reductions sets the
# same when it is first; a GPU worker gets them from its unit).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("CUBLASLT_WORKSPACE_SIZE", "32768")

import torch  # noqa: E402

from models.cope_prompt import build_prompt, prompt_head  # noqa: E402
from models.cope_scorer import PREFIX_SLACK_TOKENS, CopeScorer, answer_token_ids, prepare_model  # noqa: E402
from models.cope_settings import CopeSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cope_before import CopeScorerBefore  # noqa: E402 (bench/gpu/ is not a package)

from testing.tiny_cope import train_tokenizer  # noqa: E402

GEMMA2_9B = dict(
    vocab_size=256000,
    hidden_size=3584,
    intermediate_size=14336,
    num_hidden_layers=42,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
    hidden_activation="gelu_pytorch_tanh",
)
# The same layout in two layers of width 64: the CPU smoke run of the same code.
TINY = GEMMA2_9B | dict(
    vocab_size=8192,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
)
POLICIES_DIR = Path(__file__).resolve().parents[2] / "policies"


@dataclass
class Row:
    contents: str
    path: str
    items: int
    items_per_s: float
    peak_share: float
    padding_waste: float
    host_syncs: int | None = None
    vs_other_path: float | None = None
    vs_fp32: float | None = None
    scores: list[float] = field(default_factory=list, repr=False)


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    device = torch.device(args.device)
    torch.manual_seed(0)
    random.seed(0)
    shape = GEMMA2_9B if args.shape == "9b" else TINY
    tokenizer = bench_tokenizer(shape["vocab_size"])
    policy = make_policy(tokenizer, args.policy_tokens)
    contents = {
        "short": make_contents(tokenizer, args.items, 50, 300),
        "long": make_contents(tokenizer, max(8, args.items // 4), 600, 1000),
    }
    peak = measure_peak(device)
    settings = CopeSettings(device=args.device, compile_layers="on" if device.type == "cuda" else "off")
    model = prepare_model(build_model(shape, device, args.lora_rank), settings)  # merged, as loaded
    say(
        f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters on {device} "
        f"({time.monotonic() - started:.0f} s); bf16 matrix peak measured {peak / 1e12:.0f} TFLOP/s"
    )
    rows: list[Row] = []
    # "before" first, under torch's default cuBLAS settings, as it ran; "now" sets its own.
    before = CopeScorerBefore(model, tokenizer)
    for name, items in contents.items():
        rows.append(timed(before, "before", policy, items, name, peak, shape, tokenizer))
    now = CopeScorer(model, tokenizer, settings, "bench")
    for name, items in contents.items():
        rows.append(timed(now, "now", policy, items, name, peak, shape, tokenizer))
    for name in contents:
        old, new = (next(r for r in rows if r.contents == name and r.path == p) for p in ("before", "now"))
        old.vs_other_path = new.vs_other_path = max(abs(a - b) for a, b in zip(old.scores, new.scores))
        flips = sum((a >= 0.5) != (b >= 0.5) for a, b in zip(old.scores, new.scores))
        say(f"{name}: before vs now, largest |dp| {new.vs_other_path:.2g}, flags at 0.5 that differ: {flips}")
    identity = bit_identity(now, policy, contents["short"], rows, args.stability_items)
    if args.fp32_items and time.monotonic() - started < args.time_budget_s:
        fp32_reference(model, tokenizer, policy, contents, rows, args.fp32_items)
    if args.profile and device.type == "cuda":
        profile(now, policy, contents["short"][:64])
    report(rows, identity, args, peak, time.monotonic() - started)


def scores_of(scorer, policy: str, contents: list[str]) -> list[float]:
    return [s if isinstance(s, float) else s.score for s in scorer.score(policy, contents)]


def timed(scorer, path, policy, contents, name, peak, shape, tokenizer) -> Row:
    scores_of(scorer, policy, contents[: min(len(contents), 64)])  # warm-up: kernels, compilation
    sync(scorer.device)
    start = time.perf_counter()
    scores = scores_of(scorer, policy, contents)
    sync(scorer.device)
    elapsed = time.perf_counter() - start
    stats = scorer.last_call
    row = Row(
        name,
        path,
        len(contents),
        len(contents) / elapsed,
        useful_flops(shape, tokenizer, policy, contents) / elapsed / peak,
        1 - stats.tokens_real / max(1, stats.tokens_run),
        host_syncs(scorer, policy, contents[:64]),
        scores=scores,
    )
    syncs = "" if row.host_syncs is None else f", {row.host_syncs} host syncs per call of 64"
    say(
        f"{name:5s} {path:6s}: {row.items_per_s:.1f} items/s, {100 * row.peak_share:.0f} % of peak, "
        f"{100 * row.padding_waste:.0f} % padding{syncs}"
    )
    return row


def host_syncs(scorer, policy: str, contents: list[str]) -> int | None:
    """Times one call made the host wait for the GPU (CUDA's sync debug mode counts them)."""
    if scorer.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            scorer.score(policy, contents)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def bit_identity(scorer: CopeScorer, policy: str, contents: list[str], rows: list[Row], n: int) -> dict:
    """The current path's scores of n items: in the whole timed call, alone, among 7 random
    others, and in a call under half the token budget (other row counts): all must be equal."""
    together = next(r for r in rows if r.contents == "short" and r.path == "now").scores[:n]
    alone = [scorer.score(policy, [c])[0].score for c in contents[:n]]
    rng = random.Random(1)
    shuffled = []
    for c in contents[:n]:
        company = rng.sample(contents[n:], 7) + [c]
        rng.shuffle(company)
        shuffled.append(scorer.score(policy, company)[company.index(c)].score)
    half = replace(scorer.settings, batch_tokens=scorer.batch_tokens // 2)
    other = CopeScorer(scorer.model, scorer.tokenizer, half, "bench")
    budget = [s.score for s in other.score(policy, contents)][:n]
    differ = sum(len({a, b, c, d}) > 1 for a, b, c, d in zip(together, alone, shuffled, budget))
    largest = max(max(abs(t - x) for x in (a, s, b)) for t, a, s, b in zip(together, alone, shuffled, budget))
    result = {"items": n, "items_that_differ": differ, "largest_difference": largest, "bit_identical": differ == 0}
    say(
        f"bit identity over {n} items (in the call, alone, among 7 others, at batch_tokens "
        f"{half.batch_tokens}): {'yes' if differ == 0 else 'NO'}, {differ} differ, largest |dp| {largest:.2g}"
    )
    return result


def fp32_reference(model, tokenizer, policy, contents, rows, n) -> None:
    """transformers' own Gemma-2 in float32 (eager attention, whole prompts one at a time): the
    numbers both bf16 paths approximate. A float32 copy of the weights; skipped without room."""
    from transformers import Gemma2ForCausalLM

    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what the timed calls left cached
    reference = None
    try:
        config = copy.deepcopy(model.config)
        config._attn_implementation = "eager"
        with torch.device(device):
            reference = Gemma2ForCausalLM(config).float().eval()
        reference.load_state_dict(model.state_dict())
        zero, one = answer_token_ids(tokenizer)
        cap = config.final_logit_softcapping
        for name, items in contents.items():
            truth = []
            for content in items[:n]:
                ids = tokenizer(build_prompt(policy, content), return_tensors="pt")["input_ids"].to(device)
                with torch.inference_mode():
                    logits = reference.lm_head(reference.model(input_ids=ids).last_hidden_state[:, -1])[0, [zero, one]]
                    logits = torch.tanh(logits / cap) * cap if cap else logits
                truth.append(torch.softmax(logits, -1)[1].item())
            for row in (r for r in rows if r.contents == name):
                row.vs_fp32 = max(abs(a - b) for a, b in zip(row.scores, truth))
        say(f"float32 reference over {n} items: " + ", ".join(f"{r.contents} {r.path} {r.vs_fp32:.2g}" for r in rows))
    except torch.cuda.OutOfMemoryError:
        say("float32 reference skipped: no room for a float32 copy of the weights")
    finally:
        del reference
        if device.type == "cuda":
            torch.cuda.empty_cache()


def profile(scorer, policy, contents) -> None:
    """Where one call's GPU time goes, by kernel (self time), top 15."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    scorer.score(policy, contents)
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        scorer.score(policy, contents)
        sync(scorer.device)
    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    total = sum(e.self_device_time_total for e in events)
    say(f"profile of {len(contents)} items: {total / 1e3:.0f} ms of kernels")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:15]:
        say(f"  {100 * e.self_device_time_total / total:5.1f} %  {e.count:6d}x  {e.key[:90]}")


def useful_flops(shape: dict, tokenizer, policy: str, contents: list[str]) -> float:
    """FLOPs the answers need: every real tail token through every linear layer and attention
    over the prefix and itself, plus one LM-head row per item (padding excluded)."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q, kv = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"]
    linear = layers * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    prefix = len(tokenizer(prompt_head(policy))["input_ids"]) - PREFIX_SLACK_TOKENS
    total = 0.0
    for ids in tokenizer([build_prompt(policy, c) for c in contents])["input_ids"]:
        tail = len(ids) - prefix
        keys = tail * prefix + tail * (tail + 1) / 2
        total += 2 * linear * tail + 4 * layers * q * keys + 2 * h * shape["vocab_size"]
    return total


def build_model(shape: dict, device: torch.device, rank: int):
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(**shape, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Gemma2ForCausalLM(config).eval()
            model = get_peft_model(
                model,
                LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights="gaussian"),
            )
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # B = 0 would make the adapter a no-op; merged vs unmerged must differ in work
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model


def bench_tokenizer(vocab_size: int):
    """testing/tiny_cope's byte-level BPE (digits single, so "0" and "1" are one token each, as in
    Gemma's vocabulary), trained on the policies and pseudo-words in a second or two."""
    corpus = [p.read_text() for p in sorted(POLICIES_DIR.glob("*.md"))]
    corpus += [" ".join(_words(2000, seed=s)) for s in range(20)]
    return train_tokenizer(corpus, vocab_size=min(vocab_size, 8000))


def make_policy(tokenizer, tokens: int) -> str:
    text = "\n\n".join(p.read_text() for p in sorted(POLICIES_DIR.glob("*.md")))
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += "\n\n" + text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def make_contents(tokenizer, n: int, low: int, high: int) -> list[str]:
    rng = random.Random(n * 1000 + low)
    out = []
    for i in range(n):
        target = rng.randint(low, high)
        ids = tokenizer(" ".join(_words(target, seed=i + low)), add_special_tokens=False)["input_ids"][:target]
        out.append(tokenizer.decode(ids))
    return out


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ter", "san", "do", "ve", "ri", "pun", "e", "as", "tho", "ne", "ul", "gr", "it"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def measure_peak(device: torch.device) -> float:
    """bf16 matrix-product rate on random data (the ceiling the shares are taken against)."""
    if device.type != "cuda":
        n, dtype = 512, torch.float32
    else:
        n, dtype = 8192, torch.bfloat16
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(rows: list[Row], identity: dict, args, peak: float, seconds: float) -> None:
    matmul = torch.backends.cuda.matmul
    info = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "shape": args.shape,
        "items": args.items,
        "policy_tokens": args.policy_tokens,
        "peak_tflops": peak / 1e12,
        "bf16_reduced_precision_reduction": str(matmul.allow_bf16_reduced_precision_reduction),
        "seconds": seconds,
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "cope_gpu.json").write_text(
            json.dumps({"info": info, "bit_identity": identity, "rows": [asdict(r) for r in rows]}, indent=1)
        )
    print()
    print(
        f"{info['device']}, torch {info['torch']}, transformers {info['transformers']}, peak {peak / 1e12:.0f} "
        f"TFLOP/s, bf16 reduced-precision reductions {info['bf16_reduced_precision_reduction']}, {seconds:.0f} s"
    )
    print("| contents | path | items/s | × before | peak | padding | host syncs / 64 items | vs other path | vs fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next(b for b in rows if b.contents == r.contents and b.path == "before")
        cells = ["" if r.host_syncs is None else str(r.host_syncs), _fmt(r.vs_other_path), _fmt(r.vs_fp32)]
        print(
            f"| {r.contents} | {r.path} | {r.items_per_s:.1f} | {r.items_per_s / base.items_per_s:.2f} | "
            f"{100 * r.peak_share:.0f} % | {100 * r.padding_waste:.0f} % | " + " | ".join(cells) + " |"
        )
    print(
        f"bit-identical (now; {identity['items']} items alone, among others, in the call, at another budget): "
        f"{'yes' if identity['bit_identical'] else 'NO'} ({identity['items_that_differ']} differ, "
        f"largest |dp| {_fmt(identity['largest_difference']) or '0'})"
    )


def _fmt(value: float | None) -> str:
    return "" if value is None else ("0" if value == 0 else f"{value:.1e}")


def say(text: str) -> None:
    print(text, flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["9b", "tiny"], default="9b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=384, help="short contents (50-300 tokens); a quarter as many long")
    parser.add_argument("--policy-tokens", type=int, default=1000)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--stability-items", type=int, default=24)
    parser.add_argument("--fp32-items", type=int, default=16, help="items scored by a float32 model (0: none)")
    parser.add_argument("--time-budget-s", type=float, default=200, help="the float32 reference is skipped after this")
    parser.add_argument("--profile", action="store_true", help="print where the GPU time of one call goes")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    if args.shape == "9b" and args.device != "cuda":
        sys.exit("the 9b shape needs a CUDA device; use --shape tiny on CPU")
    return args


if __name__ == "__main__":
    main()
