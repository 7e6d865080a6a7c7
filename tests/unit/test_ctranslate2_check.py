"""The CTranslate2 GPU check's parts that run without a GPU: the tiny model it multiplies with
really runs (here on CPU), a missing libcublas.so.12 is named with the package that provides
it, a host with no GPU gets no failure, a GPU worker whose check fails stops itself, and the GPU
worker's process starts with the wheel's cuBLAS folder on LD_LIBRARY_PATH (deploy/with-cublas12).
On an H200 host with only CUDA 13 libraries the check printed: "FAIL ctranslate2 cuda:0: float16
product failed: Library libcublas.so.12 is not found or cannot be loaded ..." (bench/RESULTS.md,
section 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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
    assert "cudnn" not in hint.lower()  # CTranslate2 4.8 loads no cuDNN


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


def test_a_gpu_worker_whose_whisper_cannot_run_stops(monkeypatch):
    failure = check.GpuCheck(0, False, "float16 product failed: Library libcublas.so.12 is not found")
    monkeypatch.setattr(check, "check_ctranslate2_gpus", lambda: [failure])
    signals = []
    monkeypatch.setattr(check.os, "kill", lambda pid, sig: signals.append((pid, sig)))
    monkeypatch.delenv("WHISPER_GPU_CHECK", raising=False)
    check.worker_process_check(sender=None)
    assert signals == []  # CPU workers do not check (nor import torch for it)
    monkeypatch.setenv("WHISPER_GPU_CHECK", "1")
    check.worker_process_check(sender=None)
    assert signals == [(os.getppid(), signal.SIGTERM)]  # the worker's main process: a warm shutdown
    signals.clear()
    monkeypatch.setattr(check, "check_ctranslate2_gpus", lambda: [check.GpuCheck(0, True, "ok")])
    check.worker_process_check(sender=None)
    assert signals == []


def test_the_gpu_worker_starts_with_the_wheels_cublas_on_the_loader_path():
    root = Path(__file__).resolve().parents[2]
    unit = (root / "deploy" / "audio-pipeline-gpu-worker@.service").read_text()
    assert "ExecStart=/opt/audio-pipeline/deploy/with-cublas12 " in unit and "WHISPER_GPU_CHECK=1" in unit
    probe = "import ctypes, os; ctypes.CDLL('libcublas.so.12'); print(os.environ['LD_LIBRARY_PATH'])"
    env = {**os.environ, "AUDIO_PIPELINE_VENV": str(Path(sys.executable).parents[1]), "LD_LIBRARY_PATH": "/elsewhere"}
    done = subprocess.run(
        [str(root / "deploy" / "with-cublas12"), sys.executable, "-c", probe], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]  # libcublas.so.12 opened by name, as CTranslate2 does
    first, rest = done.stdout.strip().split(":", 1)
    assert Path(first, "libcublas.so.12").exists() and "nvidia/cublas/lib" in first and rest == "/elsewhere"
