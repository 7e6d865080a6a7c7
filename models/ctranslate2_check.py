"""Can CTranslate2 (faster-whisper, WhisperX) run float16 products on this host's GPUs, in
this process?

PyPI's ctranslate2 4.8.x is built against CUDA 12: it links the CUDA runtime statically, loads
no cuDNN, and opens one library by name at its first matrix product (not at import or model
load): libcublas.so.12 (which brings its libcublasLt.so.12 from the same folder). A process
whose loader cannot find it, such as one on a host with CUDA 13 libraries only, fails when the
first file is transcribed. The dynamic loader reads LD_LIBRARY_PATH when a process starts, so
the folder must be on it before then (deploy/with-cublas12 puts the venv's nvidia-cublas-cu12
one there for the GPU worker); a library torch has already loaded into the process also counts.
The check therefore runs in the process that will run Whisper: `worker_process_check` in each
GPU worker's pool process as it starts, `doctor` (whisper-gpu) in its own. It runs that first
product on every visible GPU with a one-layer model built here from random numbers (no
download, a few kilobytes) and names the missing library and its package.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The library ctranslate2's CUDA build opens, and the PyPI package that provides it.
CUDA12_LIBRARIES = {"libcublas.so.12": "nvidia-cublas-cu12"}
_TOKENS = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(13)]


@dataclass(frozen=True)
class GpuCheck:
    device_index: int | None  # None: a finding about the host, not one device
    ok: bool
    detail: str

    def line(self) -> str:
        where = f"cuda:{self.device_index}" if self.device_index is not None else "host"
        return f"{'ok  ' if self.ok else 'FAIL'} ctranslate2 {where}: {self.detail}"


def check_ctranslate2_gpus(compute_type: str = "float16") -> list[GpuCheck]:
    """One result per visible GPU (empty when CTranslate2 sees none)."""
    try:
        import torch  # noqa: F401  (as in a worker: torch's CUDA 12 build loads these libraries first)
    except ImportError:
        pass
    import ctranslate2

    count = ctranslate2.get_cuda_device_count()
    if count == 0:
        return []
    missing = missing_libraries()
    with tempfile.TemporaryDirectory(prefix="ct2-check-") as tmp:
        model_dir = write_tiny_generator(Path(tmp) / "model")
        results = [_run_product(model_dir, index, compute_type, missing) for index in range(count)]
    return results


def missing_libraries() -> list[str]:
    """CUDA 12 libraries this process cannot open by name."""
    missing = []
    for name in CUDA12_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    return missing


def install_hint(missing: list[str]) -> str:
    packages = sorted({CUDA12_LIBRARIES[name] for name in missing})
    found = [str(path) for path in (_pip_library_dir(p) for p in packages) if path]
    hint = f"missing {', '.join(missing)}: pip install {' '.join(packages)}"
    where = f" (installed here: {':'.join(found)})" if found else " (or a system CUDA 12 cuBLAS)"
    return hint + where + "; its lib folder must be on LD_LIBRARY_PATH before the process starts"


def write_tiny_generator(target: Path, seed: int = 0) -> Path:
    """A one-layer decoder-only CTranslate2 model of random weights (d_model 64, 16 tokens)."""
    import numpy as np
    from ctranslate2.specs import transformer_spec

    rng = np.random.default_rng(seed)
    d, vocab = 64, len(_TOKENS)

    def weights(*shape: int):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    def norm(spec) -> None:
        spec.gamma, spec.beta = np.ones(d, np.float32), np.zeros(d, np.float32)

    def linear(spec, out: int, inp: int) -> None:
        spec.weight, spec.bias = weights(out, inp), np.zeros(out, np.float32)

    spec = transformer_spec.TransformerDecoderModelSpec.from_config(1, 2, pre_norm=True)
    decoder = spec.decoder
    decoder.scale_embeddings = False
    decoder.embeddings.weight = weights(vocab, d)
    decoder.position_encodings.encodings = weights(32, d)
    norm(decoder.layer_norm)
    layer = decoder.layer[0]
    norm(layer.self_attention.layer_norm)
    linear(layer.self_attention.linear[0], 3 * d, d)
    linear(layer.self_attention.linear[1], d, d)
    norm(layer.ffn.layer_norm)
    linear(layer.ffn.linear_0, 4 * d, d)
    linear(layer.ffn.linear_1, d, 4 * d)
    linear(decoder.projection, vocab, d)
    spec.register_vocabulary(_TOKENS)
    spec.config.bos_token, spec.config.eos_token, spec.config.unk_token = "<s>", "</s>", "<unk>"
    spec.validate()
    target.mkdir(parents=True, exist_ok=True)
    spec.save(str(target))
    return target


def run_tiny_generator(model_dir: Path, device: str, device_index: int, compute_type: str):
    """Log-probabilities of a 5-token sequence: the encoder of matrix products Whisper needs."""
    import ctranslate2
    import numpy as np

    generator = ctranslate2.Generator(
        str(model_dir), device=device, device_index=device_index, compute_type=compute_type
    )
    out = generator.forward_batch([["<s>", "t1", "t2", "t3", "t4"]])
    return np.asarray(out.to_device(ctranslate2.Device.cpu)).astype(np.float32)


def _run_product(model_dir: Path, index: int, compute_type: str, missing: list[str]) -> GpuCheck:
    import numpy as np

    try:
        logits = run_tiny_generator(model_dir, "cuda", index, compute_type)
    except Exception as error:  # the loader's message names the library; add how to get it
        detail = f"{compute_type} product failed: {str(error).strip() or type(error).__name__}"
        return GpuCheck(index, False, detail + (f"; {install_hint(missing)}" if missing else ""))
    if not np.isfinite(logits).all():
        return GpuCheck(index, False, f"{compute_type} product gave non-finite values")
    return GpuCheck(index, True, f"{compute_type} product ok")


def _pip_library_dir(package: str) -> Path | None:
    """site-packages/nvidia/<name>/lib of a pip-installed NVIDIA runtime package, if present."""
    module = "nvidia." + package.removeprefix("nvidia-").removesuffix("-cu12")
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return lib if lib.is_dir() else None


def worker_process_check(**_signal_kwargs) -> None:
    """Celery's worker_process_init handler (workers/celery_app.py): where the
    worker's unit sets WHISPER_GPU_CHECK=1 (the GPU workers, deploy/), the check runs in the
    pool process that will run Whisper, with what that process has loaded. A worker whose
    Whisper cannot run stops (SIGTERM to its main process) before it takes a step, and the
    journal names the missing library; CPU workers skip it (it imports torch)."""
    if os.environ.get("WHISPER_GPU_CHECK") != "1":
        return
    failed = [result for result in check_ctranslate2_gpus() if not result.ok]
    for result in failed:
        log.critical("%s; stopping this worker", result.line())
    if failed:
        os.kill(os.getppid(), signal.SIGTERM)


def main() -> int:
    if sys.argv[1:] == ["--cublas-dir"]:  # for deploy/with-cublas12: the folder, or exit 1
        folder = _pip_library_dir("nvidia-cublas-cu12")
        print(folder or "", end="")
        return 0 if folder else 1
    results = check_ctranslate2_gpus()
    if not results:
        print("skip ctranslate2: no CUDA device visible")
        return 0
    for result in results:
        print(result.line())
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
