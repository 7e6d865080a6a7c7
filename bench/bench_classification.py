"""Classification benchmark: the CoPE-A scorer batched against one item at a time, same run.

    PYTHONPATH=. .venv/bin/python bench/bench_classification.py [--items 96] [--repeats 5] [--batch-sizes 1 8 16] [--per-item 16]

Builds the tiny random Gemma-2 + LoRA of tests/tiny_cope.py (the real loading path:
AutoTokenizer, AutoModelForCausalLM, PeftModel.from_pretrained; not timed) and loads one
scorer per batch size through `load_cope_scorer(CopeSettings(..., batch_size=B))`. Every
scorer scores the same transcripts (10-80 words, the clip vocabulary of bench_conversion)
against a real policy (policies/hate_speech.md) in one `score()` call, `--repeats` times in
rotating order, after one warm-up call each. Also timed: one `score()` call per item (what a
caller that loops over transcripts gets), on `--per-item` of the texts spread over the set.

Prints items/s and the speed-up over batch_size=1, the largest score difference to
batch_size=1, and where one call's time goes (tokenising and fitting, the policy prefix,
the per-batch forwards). No assertion on time: the table is the result.
"""

from __future__ import annotations  # noqa: I001 (bench_conversion must come first: it sets sys.path)

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import bench_conversion as conversion  # sets up sys.path for tests/ (tiny_cope); the clip vocabulary
import audio_assets.ml.cope_scorer as cope_module
from audio_assets.ml.cope_scorer import CopeScorer, CopeSettings, load_cope_scorer
from policies import load_policies
from tiny_cope import build_tiny_cope

POLICY = "hate_speech"
MIN_WORDS, MAX_WORDS = 10, 80


def transcripts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [conversion.sentence(rng, rng.randint(MIN_WORDS, MAX_WORDS)) for _ in range(count)]


def time_call(run: Callable[[], list[float]]) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds of this process, scores)."""
    started, cpu = time.perf_counter(), time.process_time()
    scores = run()
    return time.perf_counter() - started, time.process_time() - cpu, scores


def score_all(scorer: CopeScorer, policy: str, texts: list[str]) -> list[float]:
    return [r.score for r in scorer.score(policy, texts)]


def score_each(scorer: CopeScorer, policy: str, texts: list[str]) -> list[float]:
    return [scorer.score(policy, [text])[0].score for text in texts]


# --- profile: where one call's time goes ---------------------------------------------------


def profiled_targets() -> list[tuple[object, str, str]]:
    return [
        (CopeScorer, "_p1", "model"),
        (CopeScorer, "_p1_after_prefix", "batches"),
        (CopeScorer, "_p1_at_last", "forwards"),
    ]


def profile(scorers: dict[str, CopeScorer], policy: str, texts: list[str]) -> None:
    """One instrumented score() call per scorer, split into what is paid once per call
    (tokenising, the policy prefix) and what is paid per batch (cache copy, tail forward)."""
    print("\nprofile: one instrumented score() call per scorer (seconds)")
    print("| scorer | call | tokenise + fit_content (per item) | policy prefix forward (once per call) "
          "| prefix-cache copy + padding (per batch) | tail forwards (per batch) | batches | tail ms per item "
          "| speed-up over batch_size=1 if tails were free |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    first_call = None
    for name, scorer in scorers.items():
        with conversion.timed_calls(profiled_targets()) as totals:
            call, _, _ = time_call(lambda s=scorer: score_all(s, policy, texts))
        first_call = first_call or call
        model, batches, forwards = totals["model"][1], totals["batches"][1], totals["forwards"][1]
        fixed = call - forwards  # what would remain if every tail forward were free
        print(f"| {name} | {call:.2f} | {call - model:.2f} | {model - batches:.2f} | {batches - forwards:.2f} "
              f"| {forwards:.2f} | {totals['forwards'][0]} | {forwards / len(texts) * 1000:.1f} | {first_call / fixed:.1f} |")
    operator_profile(scorers, policy, texts)


def operator_profile(scorers: dict[str, CopeScorer], policy: str, texts: list[str]) -> None:
    """Which torch operators the CPU time goes to, smallest and largest batch size."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    names = [next(iter(scorers)), list(scorers)[-1]]
    shares = {}
    for name in names:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            score_all(scorers[name], policy, texts)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        shares[name] = {e.key: (e.self_cpu_time_total / total, e.count) for e in events}
    top = sorted(shares[names[0]], key=lambda k: -shares[names[0]][k][0])[:9]
    print("\ntorch operators, share of self CPU time in one score() call (calls in brackets)")
    print("| operator | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for op in top:
        cells = [f"{shares[n].get(op, (0, 0))[0]:.0%} ({shares[n].get(op, (0, 0))[1]})" for n in names]
        print(f"| {op} | " + " | ".join(cells) + " |")


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=96, help="transcripts to score (default 96)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each scorer; the median is reported")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--per-item", type=int, default=16, help="texts scored one call each (default 16)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the transcript texts")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-classification-"))
    try:
        run_bench(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_bench(args: argparse.Namespace, workdir: Path) -> None:
    base, adapter = build_tiny_cope(workdir)
    policy = load_policies([POLICY])[POLICY]
    texts = transcripts(args.items, args.seed)
    scorers = {
        f"batch_size={b}": load_cope_scorer(CopeSettings(base_model=str(base), adapter=str(adapter), device="cpu", batch_size=b))
        for b in args.batch_sizes
    }
    tokenizer = next(iter(scorers.values())).tokenizer
    prompt_tokens = [len(tokenizer(cope_module.build_prompt(policy, t))["input_ids"]) for t in texts]
    policy_tokens = len(tokenizer(cope_module.build_prompt(policy, ""))["input_ids"])
    words = [len(t.split()) for t in texts]
    print(f"{len(texts)} transcripts of {min(words)}-{max(words)} words (mean {statistics.mean(words):.0f}); "
          f"prompt {min(prompt_tokens)}-{max(prompt_tokens)} tokens, of which policy + template {policy_tokens} "
          f"(tiny 500-token BPE: ~3x Gemma's count); torch threads {torch.get_num_threads()}; "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    first = next(iter(scorers))
    # One call per item reruns the policy prefix for every item (~1 s each here), so it gets an
    # evenly spread subset of the texts; its items/s is what counts.
    subset = list(range(0, len(texts), max(1, len(texts) // args.per_item)))[: args.per_item]
    everything = list(range(len(texts)))
    methods: dict[str, tuple[list[int], Callable[[], list[float]]]] = {
        f"one score() call per item ({first})": (subset, lambda: score_each(scorers[first], policy, [texts[i] for i in subset])),
        **{name: (everything, lambda s=scorer: score_all(s, policy, texts)) for name, scorer in scorers.items()},
    }
    for _, run in methods.values():  # warm-up: first calls allocate and pick kernels
        run()
    runs: dict[str, list[tuple[float, float, list[float]]]] = {name: [] for name in methods}
    names = list(methods)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate the order
            runs[name].append(time_call(methods[name][1]))
            print(f"run {repeat + 1}/{args.repeats} {name}: {runs[name][-1][0]:.2f} s", flush=True)
    report(runs, {name: indices for name, (indices, _) in methods.items()}, first)
    profile(scorers, policy, texts)
    print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def report(runs: dict[str, list[tuple[float, float, list[float]]]], items: dict[str, list[int]], base_name: str) -> None:
    def rate(name: str, column: int) -> float:  # items per wall (0) or CPU (1) second, median run
        return len(items[name]) / statistics.median(sample[column] for sample in runs[name])

    reference = runs[base_name][0][2]  # batch_size=1, first run
    print(f"\nmedian of {len(runs[base_name])} runs; speed-up = items/s over {base_name}")
    print("| method | items | seconds | items/s | speed-up | items per CPU s | CPU speed-up | max abs score diff vs batch_size=1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, samples in runs.items():
        seconds = statistics.median(s for s, _, _ in samples)
        diff = max(abs(score - reference[i]) for _, _, scores in samples for i, score in zip(items[name], scores))
        print(f"| {name} | {len(items[name])} | {seconds:.2f} | {rate(name, 0):.1f} | {rate(name, 0) / rate(base_name, 0):.2f} "
              f"| {rate(name, 1):.1f} | {rate(name, 1) / rate(base_name, 1):.2f} | {diff:.1e} |")
    print("\nall runs (s): " + "; ".join(f"{n}: {', '.join(f'{s:.2f}' for s, _, _ in v)}" for n, v in runs.items()))
    for name, samples in runs.items():
        if name != base_name:
            paired = [(len(items[name]) / s) / (len(items[base_name]) / b) for (b, _, _), (s, _, _) in zip(runs[base_name], samples)]
            print(f"speed-up per repeat, {name}: {', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.2f})")


if __name__ == "__main__":
    sys.exit(main())
