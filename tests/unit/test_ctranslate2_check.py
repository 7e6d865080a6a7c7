"""The CTranslate2 GPU check's parts that run without a GPU: the tiny model it multiplies with
really runs (here on CPU), a missing CUDA 12 library is named with the package that provides
it, and a host with no GPU gets no failure. On an H200 host with only CUDA 13 libraries the
check printed: "FAIL ctranslate2 cuda:0: float16 product failed: Library libcublas.so.12 is not
found or cannot be loaded; missing libcublas.so.12, libcublasLt.so.12: pip install
nvidia-cublas-cu12 ..." (bench/RESULTS.md, section 2)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from models import ctranslate2_check as check


def test_tiny_generator_runs_a_real_product(tmp_path):
    model = check.write_tiny_generator(tmp_path / "model")
    logits = check.run_tiny_generator(model, "cpu", 0, "float32")
    assert logits.shape == (1, 5, len(check._TOKENS))
    assert np.isfinite(logits).all() and logits.std() > 0
    again = check.run_tiny_generator(check.write_tiny_generator(tmp_path / "again"), "cpu", 0, "float32")
    assert np.array_equal(logits, again)  # seeded: the same model every time


def test_missing_library_is_named_with_its_package(monkeypatch):
    real_cdll = check.ctypes.CDLL

    def cdll(name, *args, **kwargs):
        if name == "libcublas.so.12":
            raise OSError(f"{name}: cannot open shared object file")
        return real_cdll(name, *args, **kwargs)

    monkeypatch.setattr(check.ctypes, "CDLL", cdll)
    missing = [name for name in check.missing_libraries() if name == "libcublas.so.12"]
    assert missing == ["libcublas.so.12"]
    hint = check.install_hint(missing)
    assert "libcublas.so.12" in hint and "pip install nvidia-cublas-cu12" in hint and "LD_LIBRARY_PATH" in hint


def test_no_gpu_means_nothing_to_check():
    import ctranslate2
    import pytest

    if ctranslate2.get_cuda_device_count():
        pytest.skip("this host has a GPU: the check runs for real here")
    done = subprocess.run(
        [sys.executable, "-m", "models.ctranslate2_check"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skip ctranslate2: no CUDA device visible" in done.stdout
