"""CoPE-A scoring speed and score stability on whatever GPU this runs on, in a few minutes.

No weights on disk: a randomly initialised model of exactly Gemma-2-9B's shape (9.24 B
parameters, bf16) is built straight on the GPU, with a LoRA adapter (r=16 on every linear layer),
and a small BPE tokenizer is trained here. Speed does not depend on weight values. Needs only
PyTorch with CUDA, transformers, peft and tokenizers (no Dagster): on a bare GPU host,
`PYTHONPATH=. python3 bench/gpu/bench_cope.py`. `--shape tiny --device cpu` runs the same code
on a two-layer model in seconds (tests/unit/test_gpu_bench.py, in CI).

Prints, per configuration: items/s per policy, share of the measured bf16 matrix peak (useful
FLOPs only: padding and filler rows count as waste), padding waste, and how far scores move:
  * vs_alone: the same items scored one per call (the canonical shapes) vs all in one call;
  * vs_shuffled: in one call vs in calls of 7 random neighbours;
  * vs_reference: vs the unmerged, eager-attention scorer (what the model card runs).
Results also go to --out/cope_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from models.cope_scorer import PREFIX_SLACK_TOKENS, CopeScorer, prepare_model
from models.cope_settings import CopeSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny_cope import train_tokenizer  # noqa: E402 (tests/ is not a package)

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
    config: str
    items_per_s: float
    peak_share: float
    padding_waste: float
    vs_alone: float | None = None
    vs_shuffled: float | None = None
    vs_reference: float | None = None
    flag_flips: int | None = None


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    device = torch.device(args.device)
    torch.manual_seed(0)
    random.seed(0)
    shape = GEMMA2_9B if args.shape == "9b" else TINY
    tokenizer = bench_tokenizer(shape["vocab_size"])
    policy = make_policy(tokenizer, args.policy_tokens)
    short = make_contents(tokenizer, args.items, 50, 300)
    long = make_contents(tokenizer, max(8, args.items // 4), 600, 1000)
    peak = measure_peak(device)
    model = build_model(shape, device, args.lora_rank)
    say(
        f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters on {device} "
        f"({time.monotonic() - started:.0f} s); bf16 matrix peak measured {peak / 1e12:.0f} TFLOP/s"
    )

    rows: list[Row] = []
    base = CopeSettings(device=args.device, max_tokens=8192)
    tuned = replace(base, compile_layers="on" if args.device == "cuda" else "off")
    # What the scorer did before this bench existed: batches of 4 items, eager attention,
    # adapter not merged, no width buckets, nothing compiled.
    defaults = replace(
        base,
        max_batch_rows=4,
        batch_tokens=1 << 30,
        stable_shapes=False,
        merge_adapter=False,
        attn_implementation="eager",
        compile_layers="off",
    )
    reference = {}
    scorer = CopeScorer(prepare_model(model, defaults), tokenizer, defaults, "bench")
    for name, contents in (("short", short), ("long", long)):
        reference[name] = timed(
            scorer, policy, contents, peak, shape, rows, name, "defaults (4 rows, eager, unmerged)"
        )[1]
    tokenizing(scorer, policy, short, long)

    merged_model = prepare_model(model, replace(base, compile_layers="off"))  # merges in place
    configs = [
        ("tuned (merged, softcap_attention, stable shapes, norms+MLP compiled)", tuned, ("short", "long"), True),
        ("tuned, nothing compiled", replace(tuned, compile_layers="off"), ("short", "long"), False),
        ("tuned, stable_shapes off", replace(tuned, stable_shapes=False), ("short", "long"), True),
        ("tuned, eager attention", replace(tuned, attn_implementation="eager"), ("short", "long"), False),
        ("tuned, batch_tokens 4096", replace(tuned, batch_tokens=4096), ("short", "long"), False),
    ]
    for index, (label, settings, which, check_stability) in enumerate(configs):
        if index > 0 and time.monotonic() - started > args.time_budget_s:
            say(f"time budget spent; skipping {label}")
            continue
        scorer = CopeScorer(prepare_model(merged_model, settings), tokenizer, settings, "bench")
        for name, contents in (("short", short), ("long", long)):
            if name in which:
                row, _ = timed(scorer, policy, contents, peak, shape, rows, name, label, reference[name])
                if check_stability and name == "short":
                    stability(scorer, policy, contents, row, args.stability_items)
        if label.startswith("tuned, nothing compiled") and args.device == "cuda" and args.profile:
            profile(scorer, policy, short[:64])
    report(rows, args, peak)


def tokenizing(scorer, policy, short, long) -> None:
    from models.cope_prompt import build_prompt

    for name, contents in (("short", short), ("long", long)):
        start = time.perf_counter()
        scorer.tokenizer([build_prompt(policy, c) for c in contents])
        say(f"tokenizing {len(contents)} {name} prompts: {time.perf_counter() - start:.2f} s")


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


def timed(scorer, policy, contents, peak, shape, rows, name, label, reference=None) -> tuple[Row, list[float]]:
    scorer.score(policy, contents[: min(len(contents), 64)])  # warm-up: kernels, compilation
    sync(scorer.device)
    start = time.perf_counter()
    scores = [s.score for s in scorer.score(policy, contents)]
    sync(scorer.device)
    elapsed = time.perf_counter() - start
    stats = scorer.last_call
    flops = useful_flops(shape, scorer, policy, contents)
    row = Row(
        name, label, len(contents) / elapsed, flops / elapsed / peak, 1 - stats.tokens_real / max(1, stats.tokens_run)
    )
    if reference is not None:
        row.vs_reference = max(abs(a - b) for a, b in zip(scores, reference))
    rows.append(row)
    say(
        f"{name:5s} {label}: {row.items_per_s:.1f} items/s, {100 * row.peak_share:.0f} % of peak, "
        f"{100 * row.padding_waste:.0f} % padding" + (f", vs reference {row.vs_reference:.2g}" if reference else "")
    )
    return row, scores


def stability(scorer, policy, contents, row: Row, n: int) -> None:
    """How far one item's score moves with the company it is scored in."""
    picked = contents[:n]
    together = [s.score for s in scorer.score(policy, contents)][:n]
    alone = [scorer.score(policy, [c])[0].score for c in picked]
    rng = random.Random(1)
    shuffled = []
    for c in picked:
        company = rng.sample(contents[n:], 7) + [c]
        rng.shuffle(company)
        shuffled.append(scorer.score(policy, company)[company.index(c)].score)
    row.vs_alone = max(abs(a - b) for a, b in zip(together, alone))
    row.vs_shuffled = max(abs(a - b) for a, b in zip(together, shuffled))
    row.flag_flips = sum((a >= 0.5) != (b >= 0.5) for a, b in zip(together, alone + shuffled))
    say(
        f"      stability over {n} items: vs alone {row.vs_alone:.2g}, vs shuffled {row.vs_shuffled:.2g}, "
        f"flag flips {row.flag_flips}"
    )


def useful_flops(shape: dict, scorer: CopeScorer, policy: str, contents: list[str]) -> float:
    """FLOPs the answers need: every real tail token through every linear layer and attention
    over the prefix and itself, plus one LM-head row per item (padding excluded)."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q, kv = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"]
    linear = layers * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    from models.cope_prompt import build_prompt, prompt_head

    prefix = len(scorer.tokenizer(prompt_head(policy))["input_ids"]) - PREFIX_SLACK_TOKENS
    total = 0.0
    for ids in scorer.tokenizer([build_prompt(policy, c) for c in contents])["input_ids"]:
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
    """tests/tiny_cope's byte-level BPE (digits single, so "0" and "1" are one token each, as in
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


def report(rows: list[Row], args, peak: float) -> None:
    info = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "shape": args.shape,
        "items": args.items,
        "policy_tokens": args.policy_tokens,
        "peak_tflops": peak / 1e12,
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "cope_gpu.json").write_text(
            json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1)
        )
    print()
    print(
        f"{info['device']}, torch {info['torch']}, transformers {info['transformers']}, peak {peak / 1e12:.0f} TFLOP/s"
    )
    print("| contents | configuration | items/s | peak | padding | vs alone | vs shuffled | vs reference | flips |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [
            _fmt(r.vs_alone),
            _fmt(r.vs_shuffled),
            _fmt(r.vs_reference),
            "" if r.flag_flips is None else str(r.flag_flips),
        ]
        print(
            f"| {r.contents} | {r.config} | {r.items_per_s:.1f} | {100 * r.peak_share:.0f} % | "
            f"{100 * r.padding_waste:.0f} % | " + " | ".join(cells) + " |"
        )


def _fmt(value: float | None) -> str:
    return "" if value is None else ("0" if value == 0 else f"{value:.1e}")


def say(text: str) -> None:
    print(text, flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["9b", "tiny"], default="9b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=512, help="short contents (50-300 tokens); a quarter as many long")
    parser.add_argument("--policy-tokens", type=int, default=1000)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--stability-items", type=int, default=24)
    parser.add_argument("--time-budget-s", type=float, default=240, help="later configurations are skipped after this")
    parser.add_argument("--profile", action="store_true", help="print where the GPU time of one call goes")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    if args.shape == "9b" and args.device != "cuda":
        sys.exit("the 9b shape needs a CUDA device; use --shape tiny on CPU")
    return args


if __name__ == "__main__":
    main()
