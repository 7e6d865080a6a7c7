"""CoPE-A (Gemma-2-9B + zentropi LoRA): p("1") that a content meets a policy.

Loaded exactly as the model card does (AutoTokenizer, AutoModelForCausalLM,
PeftModel.from_pretrained), then prepared for speed: the LoRA adapter is merged into the base
weights (unquantized models; scores agree with the unmerged model to float error) and attention
runs through `softcap_attention`, which keeps Gemma-2's logit soft-capping (PyTorch's `sdpa`
drops it) without the eager path's copies. Cached per process, keyed by CopeSettings, so a
long-lived GPU worker loads it once.

Batching. A prompt is policy + template + content, and the policy is the same for every content
of a call (and most of the tokens: ~1,000 for a policy, ~200 for a one-minute clip). The token
prefix the policy fixes runs through the model once per call; each batch starts from its
key/value cache, expanded over the rows as views (no copy), and only the content tails run.
Batches are sized by a token budget (tail tokens per pass, capped by the memory the KV cache and
activations of a row take), not by a count of items.

Stable scores (`stable_shapes`, default). In bf16 on a GPU an item's score moves by up to 0.01
with the shapes it happens to be computed in (its batch's width and row count pick different
kernels). So every shape is a function of the item alone: its tail is padded to a width bucket
of its own length, and every batch of that bucket has the same row count (a partial batch is
filled with copies of its last row, whose results are dropped). The stored score of a transcript
is then the same whichever transcripts it was scored with (tests/unit/test_cope.py checks this
bitwise; bench/gpu/ measures it on a GPU), for a given device type and settings.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.cope_prompt import build_prompt, fit_content, prompt_head
from models.cope_settings import CopeSettings, cope_model_name
from models.scoring import EMPTY_TRANSCRIPT, PolicyScore, is_empty

log = logging.getLogger(__name__)

SOFTCAP_ATTENTION = "softcap_attention"
ATTENTION_CHOICES = ("auto", SOFTCAP_ATTENTION, "eager", "flash_attention_2", "flex_attention", "sdpa")
# Tokens left out of the cached prefix at its end: BPE may merge the template's last characters
# with the content's first ones, so only the head before them is the same for every content.
PREFIX_SLACK_TOKENS = 4


@dataclass
class CallStats:
    """Tokens the last score() call ran: its items' own, and in all with padding and filler
    rows (the bench reports the difference as waste)."""

    tokens_real: int = 0
    tokens_run: int = 0


@dataclass(frozen=True)
class Batch:
    """Items (positions in a call's list) run together: `rows` rows of `width` tail tokens;
    rows beyond the items repeat the last one and are dropped."""

    items: tuple[int, ...]
    width: int
    rows: int


def bucket_width(length: int, bucket_tokens: int) -> int:
    return max(1, math.ceil(length / bucket_tokens)) * bucket_tokens


def plan_batches(
    lengths: Sequence[int],
    rows_for_width: Callable[[int], int],
    bucket_tokens: int,
    stable_shapes: bool,
    fixed_rows: bool = True,
) -> list[Batch]:
    """Group items (by tail length) into batches.

    stable_shapes: an item's width is its own length's bucket and (fixed_rows) every batch of a
    width has rows_for_width(width) rows, so no item's shapes depend on the others. Otherwise:
    items in length order, each batch as many as rows_for_width(its widest) allows, no filler.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[Batch] = []
    if stable_shapes:
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(bucket_width(lengths[i], bucket_tokens), []).append(i)
        for width, members in sorted(groups.items()):
            rows = rows_for_width(width)
            for s in range(0, len(members), rows):
                part = tuple(members[s : s + rows])
                batches.append(Batch(part, width, rows if fixed_rows else len(part)))
        return batches
    current: list[int] = []
    for i in order:
        if current and len(current) + 1 > rows_for_width(lengths[i]):
            batches.append(Batch(tuple(current), lengths[current[-1]], len(current)))
            current = []
        current.append(i)
    if current:
        batches.append(Batch(tuple(current), lengths[current[-1]], len(current)))
    return batches


class CopeScorer:
    """Implements PolicyScorer for CoPE-A (or any causal LM that answers "0"/"1")."""

    def __init__(self, model: Any, tokenizer: Any, settings: CopeSettings, model_name: str):
        self.model, self.tokenizer, self.settings, self.model_name = model, tokenizer, settings, model_name
        self.device = next(model.parameters()).device
        self.answer_ids = answer_token_ids(tokenizer)  # ids of "0" and "1"
        self.decoder, self.lm_head = model.get_decoder(), model.get_output_embeddings()
        self.final_softcap = getattr(model.config, "final_logit_softcapping", None)
        self.batch_tokens = settings.batch_tokens or (2048 if self.device.type == "cuda" else 1024)
        self.memory_budget = _memory_budget(self.device)
        self._row_cost = _row_cost(model.config, next(model.parameters()).element_size())
        self._shrunk: dict[int, int] = {}  # width -> rows, after an out-of-memory error
        self.last_call = CallStats()

    def score(self, policy: str, contents: Sequence[str]) -> list[PolicyScore]:
        results: list[PolicyScore | None] = [EMPTY_TRANSCRIPT if is_empty(c) else None for c in contents]
        wanted = [i for i, result in enumerate(results) if result is None]
        self.last_call = CallStats()
        if not wanted:
            return results  # type: ignore[return-value]
        # One batched tokenizer call for every prompt; only prompts over budget are fitted again.
        prompts = self.tokenizer([build_prompt(policy, contents[i]) for i in wanted])["input_ids"]
        truncated = [False] * len(wanted)
        for k, i in enumerate(wanted):
            if len(prompts[k]) > self.settings.max_tokens:
                fitted, truncated[k] = fit_content(self.tokenizer, policy, contents[i], self.settings.max_tokens)
                prompts[k] = self.tokenizer(build_prompt(policy, fitted))["input_ids"]
        for k, p in enumerate(self._p1_all(policy, prompts)):
            results[wanted[k]] = PolicyScore(score=p, truncated=truncated[k])
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _p1_all(self, policy: str, prompts: list[list[int]]) -> list[float]:
        if not self.settings.prefix_cache:
            return self._p1_padded_all(prompts)
        head = self.tokenizer(prompt_head(policy))["input_ids"]
        shared = max(0, len(head) - PREFIX_SLACK_TOKENS)
        cached = [
            k for k, ids in enumerate(prompts) if shared > 0 and len(ids) > shared and ids[:shared] == head[:shared]
        ]
        probs: list[float | None] = [None] * len(prompts)
        if cached:
            prefix = self.decoder(input_ids=self._tensor([head[:shared]]), use_cache=True).past_key_values
            tails = [prompts[k][shared:] for k in cached]
            for k, p in zip(cached, self._p1_tails(tails, prefix, shared)):
                probs[k] = p
        # A prompt whose tokens merged across the policy's end runs alone, from scratch: its
        # shapes still depend on nothing but itself.
        for k in (k for k in range(len(prompts)) if probs[k] is None):
            probs[k] = self._p1_padded([prompts[k]])[0]
        return probs  # type: ignore[return-value]

    def _p1_tails(self, tails: list[list[int]], prefix: Any, shared: int) -> list[float]:
        probs: list[float] = [0.0] * len(tails)
        for batch in plan_batches(
            [len(t) for t in tails],
            lambda w: self._rows_for_width(w, shared),
            self.settings.bucket_tokens,
            self.settings.stable_shapes,
            self.settings.fixed_rows,
        ):
            rows = [tails[i] for i in batch.items]
            for i, p in zip(batch.items, self._run_tails(rows, prefix, shared, batch.width, batch.rows)):
                probs[i] = p
        return probs

    def _run_tails(self, rows: list[list[int]], prefix: Any, shared: int, width: int, n_rows: int) -> list[float]:
        """p("1") for `rows` (tails after a prefix of `shared` tokens) in shapes (n_rows, width)."""
        try:
            filled = rows + [rows[-1]] * (n_rows - len(rows))
            # Tails are right-padded: left pads would sit between prefix and content and change
            # which tokens a sliding-window layer sees.
            ids, tail_mask = self._pad(filled, "right", width)
            mask = torch.cat([torch.ones(n_rows, shared, dtype=tail_mask.dtype, device=self.device), tail_mask], 1)
            positions = shared + torch.arange(width, device=self.device).expand_as(ids)
            self._count(rows, n_rows * width)
            return self._p1_at(ids, mask, positions, tail_mask.sum(1) - 1, _expanded_cache(prefix, n_rows))[: len(rows)]
        except torch.cuda.OutOfMemoryError:
            if n_rows == 1:
                raise
            # Fewer rows from now on: slower and (for this width) other shapes, but not a failure.
            torch.cuda.empty_cache()
            self._shrunk[width] = max(1, n_rows // 2)
            log.warning("CoPE batch of %d x %d tokens ran out of memory; using %d rows", n_rows, width, n_rows // 2)
            out: list[float] = []
            for s in range(0, len(rows), self._shrunk[width]):
                part = rows[s : s + self._shrunk[width]]
                out += self._run_tails(part, prefix, shared, width, min(self._shrunk[width], n_rows))
            return out

    def _p1_padded_all(self, prompts: list[list[int]]) -> list[float]:
        order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
        probs: list[float] = [0.0] * len(prompts)
        size = self.settings.max_batch_rows
        for s in range(0, len(order), size):
            part = order[s : s + size]
            for k, p in zip(part, self._p1_padded([prompts[k] for k in part])):
                probs[k] = p
        return probs

    def _p1_padded(self, batch: list[list[int]]) -> list[float]:
        ids, mask = self._pad(batch, self.settings.padding_side, max(len(row) for row in batch))
        # Positions count real tokens only, so a left-padded row sees the positions it would alone.
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # last real token of each row
        self._count(batch, ids.numel())
        return self._p1_at(ids, mask, positions, last, past_key_values=None)

    def _p1_at(self, ids, mask, positions, last, past_key_values) -> list[float]:
        """p("1") at each row's `last` position. Only those rows go through the LM head (Gemma's
        256k vocabulary at every position would be gigabytes), each on its own: one row's logits
        never depend on which rows share its batch."""
        hidden = self.decoder(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        ).last_hidden_state
        picked = hidden[torch.arange(len(ids), device=ids.device), last]
        logits = self.lm_head(picked)[:, self.answer_ids].float()
        if self.final_softcap:  # Gemma-2 caps its output logits: tanh(x / c) * c
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return torch.softmax(logits, dim=-1)[:, 1].tolist()

    def _rows_for_width(self, width: int, shared: int) -> int:
        if width in self._shrunk:
            return self._shrunk[width]
        by_memory = self.memory_budget // max(1, self._row_cost(shared, width))
        return max(1, min(self.settings.max_batch_rows, self.batch_tokens // width, by_memory))

    def _count(self, real_rows: list[list[int]], tokens_run: int) -> None:
        self.last_call.tokens_real += sum(len(r) for r in real_rows)
        self.last_call.tokens_run += tokens_run

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _pad(self, rows: list[list[int]], side: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) with rows padded to `width` on `side`."""
        pad_id = self.tokenizer.pad_token_id or 0  # any id: pads are masked out
        ids, mask = [], []
        for row in rows:
            fill = width - len(row)
            ids.append([pad_id] * fill + row if side == "left" else row + [pad_id] * fill)
            mask.append([0] * fill + [1] * len(row) if side == "left" else [1] * len(row) + [0] * fill)
        return self._tensor(ids), self._tensor(mask)


def _expanded_cache(prefix: Any, rows: int) -> Any:
    """The prefix's KV cache over `rows` rows without copying it: each layer's tensors become
    broadcast views. Safe because a forward pass concatenates new keys onto a layer's tensors
    (a new tensor) and never writes into them."""
    layers = getattr(prefix, "layers", None)
    if not layers or not all(getattr(layer, "keys", None) is not None for layer in layers):
        cache = copy.deepcopy(prefix)  # a cache without per-layer tensors: copy, then repeat
        cache.batch_repeat_interleave(rows)
        return cache
    cache = copy.copy(prefix)
    cache.layers = []
    for layer in layers:
        view = copy.copy(layer)
        view.keys = layer.keys.expand(rows, -1, -1, -1)
        view.values = layer.values.expand(rows, -1, -1, -1)
        cache.layers.append(view)
    return cache


def _memory_budget(device: torch.device) -> int:
    """Bytes the KV caches and activations of one batch may take: 60 % of the GPU memory free
    once the model is loaded, rounded down to a power of two so that small differences in free
    memory between worker starts give the same batch shapes. 4 GiB on CPU."""
    if device.type != "cuda":
        return 4 << 30
    free, _total = torch.cuda.mem_get_info(device)
    return 1 << int(math.log2(max(1 << 20, int(free * 0.6))))


def _row_cost(config: Any, element_bytes: int) -> Callable[[int, int], int]:
    """Bytes one row of `width` tail tokens after a prefix of `shared` tokens needs: its KV cache
    in every layer, plus one layer's activations and attention scores at a time."""
    layers = getattr(config, "num_hidden_layers", 1)
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", heads)
    hidden = getattr(config, "hidden_size", 1)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    kv_per_token = 2 * layers * kv_heads * head_dim * element_bytes
    activations_per_token = element_bytes * (6 * hidden + 3 * intermediate)

    def cost(shared: int, width: int) -> int:
        keys = shared + width
        scores = width * heads * keys * (element_bytes + 4)  # scores + float32 softmax
        return kv_per_token * keys + activations_per_token * width + scores

    return cost


# --- attention ------------------------------------------------------------------------------


def softcap_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    """Gemma-2's eager attention (soft-capped logits, float32 softmax) without its copies: the
    query heads of one key/value head are stacked instead of repeating keys and values per head,
    and on CUDA scale, cap, mask and softmax run as one compiled kernel instead of seven passes
    over the scores. Same arguments and result layout as transformers' attention functions."""
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    stacked = query.reshape(batch, kv_heads, groups * length, dim)
    scores = torch.matmul(stacked, key.transpose(2, 3)).view(batch, kv_heads, groups, length, keys)
    mask = attention_mask[:, :, None, :, :keys] if attention_mask is not None else None
    softmax = _compiled_softmax() if query.is_cuda else _capped_softmax
    probs = softmax(scores, mask, float(scaling if scaling is not None else dim**-0.5), softcap)
    out = torch.matmul(probs.view(batch, kv_heads, groups * length, keys), value)
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def _capped_softmax(scores: torch.Tensor, mask: torch.Tensor | None, scaling: float, softcap: float | None):
    x = scores.float() * scaling
    if softcap is not None:
        x = torch.tanh(x / softcap) * softcap
    if mask is not None:
        x = x + mask
    return torch.softmax(x, dim=-1).to(scores.dtype)


_COMPILED: list[Callable] = []


def _compiled_softmax() -> Callable:
    """_capped_softmax compiled once per process (dynamic shapes: no recompiling per batch
    shape); if compiling fails on this host, the plain ops from then on."""
    if not _COMPILED:
        compiled = torch.compile(_capped_softmax, dynamic=True)

        def run(*args):
            try:
                return compiled(*args)
            except Exception as error:  # noqa: BLE001 - any compiler failure: the plain ops are still right
                log.warning("compiling the soft-capped softmax failed (%s); running it uncompiled", error)
                _COMPILED[0] = _capped_softmax
                return _capped_softmax(*args)

        _COMPILED.append(run)
    return _COMPILED[0]


def _register_softcap_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(SOFTCAP_ATTENTION, softcap_attention)
    AttentionMaskInterface.register(SOFTCAP_ATTENTION, eager_mask)  # additive float mask, as eager


def resolve_attention(name: str, config: Any) -> str:
    """The attention implementation to load with; refuses one that drops soft-capping."""
    if name not in ATTENTION_CHOICES:
        raise ValueError(f"attn_implementation must be one of {', '.join(ATTENTION_CHOICES)}, not {name!r}")
    if name == "sdpa" and getattr(config, "attn_logit_softcapping", None):
        raise ValueError(
            "attn_implementation='sdpa' skips this model's attention soft-capping and changes its scores; "
            f"use auto ({SOFTCAP_ATTENTION}), eager, flash_attention_2 or flex_attention"
        )
    if name in ("auto", SOFTCAP_ATTENTION):
        _register_softcap_attention()
        return SOFTCAP_ATTENTION
    return name


def prepare_model(model: Any, settings: CopeSettings) -> Any:
    """A loaded (base or PEFT) model made ready to score: adapter merged where the weights
    allow it, attention implementation set, eval mode."""
    if settings.merge_adapter and settings.quantization == "none" and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    attention = resolve_attention(settings.attn_implementation, model.config)
    if model.config._attn_implementation != attention:
        model.set_attn_implementation(attention)
    device = next(model.parameters()).device
    compile_layer_parts(
        model, settings.compile_layers == "on" or (settings.compile_layers == "auto" and device.type == "cuda")
    )
    return model.eval()


def compile_layer_parts(model: Any, on: bool = True) -> None:
    """Regional compilation: every part of each decoder layer except its attention (the norms,
    the MLP) runs through torch.compile, so a norm is one kernel instead of eight passes over
    the activations, and the MLP's activation and product are fused. The parts of all layers
    share their code, so one compilation (dynamic shapes) serves every layer and batch shape;
    attention stays out because the KV cache it updates differs per layer. A compiler failure
    at the first call falls back to the plain forward for good. `on=False` undoes it."""
    for layer in model.get_decoder().layers:
        attention = getattr(layer, "self_attn", None)
        for part in layer.children():
            if part is attention:
                continue
            compiled = isinstance(part.__dict__.get("forward"), _CompiledForward)
            if on and not compiled:
                part.forward = _CompiledForward(part.forward)
            elif not on and compiled:
                del part.forward  # back to the class's forward


class _CompiledForward:
    def __init__(self, forward: Callable):
        self.plain = forward
        self.compiled: Callable | None = torch.compile(forward, dynamic=True)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure: the plain forward is right
                log.warning("compiled %s failed (%s); running it uncompiled", self.plain, error)
                self.compiled = None
        return self.plain(*args, **kwargs)


def answer_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of "0" and "1", in that order; each answer must be exactly one token."""
    ids = []
    for answer in ("0", "1"):
        encoded = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"answer {answer!r} is {len(encoded)} tokens ({encoded}) in this tokenizer, not 1")
        ids.append(encoded[0])
    return ids


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


def resolve_model_path(name: str, models_root: str | None) -> str:
    """`models_root/name` when that directory exists, else the name (hub id or path) as given."""
    if models_root and (Path(models_root) / name).is_dir():
        return str(Path(models_root) / name)
    return name


def _load(settings: CopeSettings) -> CopeScorer:
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _check_settings(settings)
    device = _pick_device(settings.device)
    base_path = resolve_model_path(settings.base_model, settings.models_root)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        attn_implementation=resolve_attention(settings.attn_implementation, AutoConfig.from_pretrained(base_path)),
        quantization_config=_quantization_config(settings.quantization, device),
        # Straight onto the GPU: a 9B model staged in CPU memory first needs 18 GB of RAM.
        device_map={"": str(device)} if device.type == "cuda" else None,
    )
    if settings.adapter:
        model = PeftModel.from_pretrained(model, resolve_model_path(settings.adapter, settings.models_root))  # type: ignore[assignment]
    if device.type != "cuda":
        model.to(device)  # type: ignore[arg-type]
    return CopeScorer(prepare_model(model, settings), tokenizer, settings, cope_model_name(settings))


def _check_settings(settings: CopeSettings) -> None:
    if settings.padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {settings.padding_side!r}")
    if settings.quantization not in ("none", "8bit", "4bit"):
        raise ValueError(f"quantization must be none, 8bit or 4bit, not {settings.quantization!r}")
    if settings.attn_implementation not in ATTENTION_CHOICES:
        raise ValueError(f"attn_implementation must be one of {', '.join(ATTENTION_CHOICES)}")
    if settings.compile_layers not in ("auto", "on", "off"):
        raise ValueError(f"compile_layers must be auto, on or off, not {settings.compile_layers!r}")
    if (
        settings.max_batch_rows < 1
        or settings.max_tokens < 1
        or settings.batch_tokens < 0
        or settings.bucket_tokens < 1
    ):
        raise ValueError("max_batch_rows, max_tokens and bucket_tokens must be positive, batch_tokens >= 0")


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
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
