"""What picks a CoPE-A model and the name its rows record, without importing torch: the
classifier resource, the model-version check and the run's metadata need both before (or
without) loading the model; models/cope_scorer.py loads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CopeSettings:
    """Everything that picks the model and its numerics; hashable, the per-process cache key."""

    base_model: str = "google/gemma-2-9b"  # name or local dir
    adapter: str | None = "zentropi-ai/cope-a-9b"  # LoRA adapter name or local dir; None = base only
    models_root: str | None = None  # names are looked up under it first
    device: str = "auto"  # cuda if available else cpu
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes on cuda)
    max_tokens: int = 8192
    # Tail tokens per forward pass (rows x width); 0 = 2048 on CUDA (enough to keep the matrix
    # units busy), 1024 on CPU. Rows per batch follow from it and the width alone, never from
    # free memory, so workers of one kind plan the same batches.
    batch_tokens: int = 0
    max_batch_rows: int = 64
    bucket_tokens: int = 16  # each tail is padded to a multiple of this: attention's length is the item's own
    merge_adapter: bool = True  # fold the LoRA weights into the base (unquantized models only)
    # Compile the norms and MLP of each decoder layer and the attention softmax (torch.compile,
    # dynamic shapes: one compilation serves every layer and batch shape). auto = on CUDA only.
    compile_layers: str = "auto"  # auto | on | off


def cope_model_name(settings: CopeSettings) -> str:
    """What rows record as `model`: names as configured, plus the quantization if any."""
    name = f"cope-a:{settings.adapter}@{settings.base_model}" if settings.adapter else f"base:{settings.base_model}"
    return name if settings.quantization == "none" else f"{name}+{settings.quantization}"
