"""bench/gpu/bench_cope.py runs end to end: here on CPU with a two-layer model of Gemma-2's
layout, the same code that a GPU host runs with the 9B shape (bench/RESULTS.md, section 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_runs_on_cpu_with_a_tiny_shape(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "bench" / "gpu" / "bench_cope.py"),
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--items",
        "12",
        "--policy-tokens",
        "150",
        "--stability-items",
        "2",
        "--time-budget-s",
        "0",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| short | defaults" in done.stdout
    rows = json.loads((tmp_path / "cope_gpu.json").read_text())["rows"]
    tuned = [r for r in rows if r["config"].startswith("tuned (") and r["contents"] == "short"]
    assert tuned and tuned[0]["items_per_s"] > 0
    # Stable shapes: an item's score is the same alone, in other company and in the full call.
    assert tuned[0]["vs_alone"] == 0 and tuned[0]["vs_shuffled"] == 0
    assert tuned[0]["vs_reference"] < 1e-5  # the tiny model runs in float32 on CPU
