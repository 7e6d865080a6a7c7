"""CoPE-A (Gemma-2-9B + zentropi LoRA): p("1") that a content meets a policy.

Loaded exactly as the model card does (AutoTokenizer, AutoModelForCausalLM,
PeftModel.from_pretrained); cached per process, keyed by CopeSettings, so a long-lived GPU
worker loads it once.

Batching. A prompt is policy + template + content, and the policy is the same for every
content of a call (and usually most of the tokens: ~1,000 for a policy, ~200 for a one-minute
clip). With `prefix_cache` (default) the token prefix shared by all prompts of a call runs
through the model once; every batch then starts from a copy of its key/value cache expanded
over the batch, and only the content tails run per item. Without it, whole prompts are padded
on `padding_side` and run together. Both paths read the logits of each row's last real token
and agree with one-at-a-time scoring to float error (tests/unit/test_cope.py).
"""

from __future__ import annotations

import copy
import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from audio_assets.ml.cope_prompt import build_prompt, fit_content
from audio_assets.ml.scoring import EMPTY_TRANSCRIPT, PolicyScore, is_empty


@dataclass(frozen=True)
class CopeSettings:
    """Everything that picks the model and its numerics; hashable, the per-process cache key."""

    base_model: str = "google/gemma-2-9b"  # name or local dir
    adapter: str | None = "zentropi-ai/cope-a-9b"  # LoRA adapter name or local dir; None = base only
    models_root: str | None = None  # names are looked up under it first
    device: str = "auto"  # cuda if available else cpu
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes on cuda)
    max_tokens: int = 8192
    batch_size: int = 4
    padding_side: str = "left"  # left or right (prefix_cache=False only); same scores either way
    prefix_cache: bool = True  # run the policy prefix once per call, reuse its KV cache
    # Gemma-2 was trained with attention-logit soft-capping; "eager" and "flash_attention_2"
    # apply it, "sdpa" silently skips it in transformers 4.57 (scores drift).
    attn_implementation: str = "eager"


class CopeScorer:
    """Implements PolicyScorer for CoPE-A (or any causal LM that answers "0"/"1")."""

    def __init__(self, model: Any, tokenizer: Any, settings: CopeSettings, model_name: str):
        self.model, self.tokenizer, self.settings, self.model_name = model, tokenizer, settings, model_name
        self.device = next(model.parameters()).device
        self.answer_ids = answer_token_ids(tokenizer)  # ids of "0" and "1"

    def score(self, policy: str, contents: Sequence[str]) -> list[PolicyScore]:
        results: list[PolicyScore | None] = [None] * len(contents)
        items: list[tuple[int, list[int], bool]] = []  # (position in contents, prompt ids, truncated)
        for i, content in enumerate(contents):
            if is_empty(content):
                results[i] = EMPTY_TRANSCRIPT
                continue
            fitted, truncated = fit_content(self.tokenizer, policy, content, self.settings.max_tokens)
            items.append((i, self.tokenizer(build_prompt(policy, fitted))["input_ids"], truncated))
        if items:
            # Similar lengths in one batch waste less on padding.
            items.sort(key=lambda item: len(item[1]))
            probs = self._p1([ids for _, ids, _ in items])
            for (i, _, truncated), p in zip(items, probs):
                results[i] = PolicyScore(score=p, truncated=truncated)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _p1(self, prompts: list[list[int]]) -> list[float]:
        size = self.settings.batch_size
        batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        shared = _common_prefix_length(prompts)
        if not self.settings.prefix_cache or shared == 0:
            return [p for batch in batches for p in self._p1_padded(batch)]
        prefix = self.model(input_ids=self._tensor([prompts[0][:shared]]), use_cache=True, logits_to_keep=1)
        return [p for batch in batches for p in self._p1_after_prefix(batch, prefix.past_key_values, shared)]

    def _p1_padded(self, batch: list[list[int]]) -> list[float]:
        ids, mask = self._pad(batch, self.settings.padding_side)
        # Positions count real tokens only, so a left-padded row sees the positions it would alone.
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return self._p1_at_last(ids, mask, positions, past_key_values=None)

    def _p1_after_prefix(self, batch: list[list[int]], prefix_cache: Any, shared: int) -> list[float]:
        cache = copy.deepcopy(prefix_cache)  # forward() appends to the cache it is given
        cache.batch_repeat_interleave(len(batch))
        # Tails are always right-padded here: left pads would sit between prefix and content
        # and change which tokens a sliding-window layer sees.
        ids, tail_mask = self._pad([prompt[shared:] for prompt in batch], "right")
        mask = torch.cat([torch.ones(len(batch), shared, dtype=tail_mask.dtype, device=self.device), tail_mask], 1)
        positions = shared + torch.arange(ids.shape[1], device=self.device).expand_as(ids)
        return self._p1_at_last(ids, mask, positions, past_key_values=cache)

    def _p1_at_last(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past_key_values: Any):
        """p("1") at each row's last real token (right padding: not the last column)."""
        width = ids.shape[1]
        last = width - 1 - mask[:, -width:].flip(1).argmax(1)  # last 1 in the row's own tokens
        # Only the needed columns go through the LM head: Gemma's 256k vocabulary times 8k
        # positions would be gigabytes of logits per row.
        columns = torch.unique(last)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
            logits_to_keep=columns,
        )
        rows = torch.arange(len(ids), device=ids.device)
        logits = out.logits[rows, torch.searchsorted(columns, last)][:, self.answer_ids].float()
        return torch.softmax(logits, dim=-1)[:, 1].tolist()

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _pad(self, rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) with rows padded to one width on `side`."""
        width = max(len(row) for row in rows)
        pad_id = self.tokenizer.pad_token_id or 0  # any id: pads are masked out
        ids, mask = [], []
        for row in rows:
            fill = width - len(row)
            ids.append([pad_id] * fill + row if side == "left" else row + [pad_id] * fill)
            mask.append([0] * fill + [1] * len(row) if side == "left" else [1] * len(row) + [0] * fill)
        return self._tensor(ids), self._tensor(mask)


def answer_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of "0" and "1", in that order; each answer must be exactly one token."""
    ids = []
    for answer in ("0", "1"):
        encoded = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"answer {answer!r} is {len(encoded)} tokens ({encoded}) in this tokenizer, not 1")
        ids.append(encoded[0])
    return ids


def _common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own."""
    shortest = min(len(ids) for ids in prompts)
    n = 0
    while n < shortest - 1 and all(ids[n] == prompts[0][n] for ids in prompts):
        n += 1
    return n


# --- loading -------------------------------------------------------------------------------

_LOADED: dict[CopeSettings, CopeScorer] = {}
_LOAD_LOCK = threading.Lock()
_LOAD_COUNT = 0


def load_cope_scorer(settings: CopeSettings) -> CopeScorer:
    """The scorer for these settings, loaded once per process."""
    global _LOAD_COUNT
    with _LOAD_LOCK:
        if settings not in _LOADED:
            _LOADED[settings] = _load(settings)
            _LOAD_COUNT += 1
        return _LOADED[settings]


def load_count() -> int:
    """How many models this process has loaded (tests check that equal settings load once)."""
    return _LOAD_COUNT


def cope_model_name(settings: CopeSettings) -> str:
    """What rows record as `model`: names as configured, plus the quantization if any."""
    name = f"cope-a:{settings.adapter}@{settings.base_model}" if settings.adapter else f"base:{settings.base_model}"
    return name if settings.quantization == "none" else f"{name}+{settings.quantization}"


def resolve_model_path(name: str, models_root: str | None) -> str:
    """`models_root/name` when that directory exists, else the name (hub id or path) as given."""
    if models_root and (Path(models_root) / name).is_dir():
        return str(Path(models_root) / name)
    return name


def _load(settings: CopeSettings) -> CopeScorer:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_settings(settings)
    device = _pick_device(settings.device)
    base_path = resolve_model_path(settings.base_model, settings.models_root)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        attn_implementation=settings.attn_implementation,
        quantization_config=_quantization_config(settings.quantization, device),
        # Straight onto the GPU: a 9B model staged in CPU memory first needs 18 GB of RAM.
        device_map={"": str(device)} if device.type == "cuda" else None,
    )
    if settings.adapter:
        model = PeftModel.from_pretrained(model, resolve_model_path(settings.adapter, settings.models_root))
    if device.type != "cuda":
        model.to(device)
    model.eval()
    return CopeScorer(model, tokenizer, settings, cope_model_name(settings))


def _check_settings(settings: CopeSettings) -> None:
    if settings.padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {settings.padding_side!r}")
    if settings.quantization not in ("none", "8bit", "4bit"):
        raise ValueError(f"quantization must be none, 8bit or 4bit, not {settings.quantization!r}")
    if settings.batch_size < 1 or settings.max_tokens < 1:
        raise ValueError("batch_size and max_tokens must be positive")


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _quantization_config(quantization: str, device: torch.device) -> Any:
    if quantization == "none":
        return None
    if device.type != "cuda":
        raise ValueError(f"quantization={quantization!r} needs a CUDA device (bitsandbytes); this one is {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"quantization={quantization!r} needs the bitsandbytes package, which is not installed")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
