"""bench/gpu/bench_cope.py runs end to end: here on CPU with a two-layer model of Gemma-2's
layout, the same code that a GPU host runs with the 9B shape (bench/RESULTS.md, section 2): the
path before issue 24 and the current one, timed, compared, and the current one's bit identity."""

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
        *("--shape", "tiny", "--device", "cpu", "--items", "12", "--policy-tokens", "150"),
        *("--stability-items", "2", "--fp32-items", "3", "--out", str(tmp_path)),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| short | before |" in done.stdout and "| long | now |" in done.stdout
    result = json.loads((tmp_path / "cope_gpu.json").read_text())
    rows = {(r["contents"], r["path"]): r for r in result["rows"]}
    assert set(rows) == {(c, p) for c in ("short", "long") for p in ("before", "now")}
    for row in rows.values():
        assert row["items_per_s"] > 0 and row["peak_share"] > 0
        # float32 on CPU: both paths compute the same numbers, up to the order of sums
        assert row["vs_other_path"] < 1e-5 and row["vs_fp32"] < 1e-5
    assert rows["short", "now"]["padding_waste"] <= rows["short", "before"]["padding_waste"]  # no filler rows
    assert result["bit_identity"] == {
        "items": 2,
        "items_that_differ": 0,
        "largest_difference": 0.0,
        "bit_identical": True,
    }
