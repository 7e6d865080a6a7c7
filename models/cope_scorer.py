"""CoPE-A (Gemma-2-9B + zentropi LoRA): p("1") that a content meets a policy.

Loaded as the model card does (AutoTokenizer, AutoModelForCausalLM, PeftModel.from_pretrained),
the LoRA adapter merged into the base weights (unquantized models), once per process and
CopeSettings. The forward pass is this module's own, over the model's modules, because of the
shape of a call: the policy is the same for every content of a call and most of each prompt
(~1,000 tokens against ~200 for a one-minute clip). Its tokens run once per call and each layer
keeps their keys and values once; each row of content then attends to that one prefix K/V and
to its own tail in one soft-capped softmax (`prefix_attention`: no row gets a copy of the prefix).

Stable scores without filler rows: an item's score does not depend on what it is scored with.
Every sum its numbers go through runs at lengths of its own (its tail padded to a width bucket
of its own length, norms over the hidden size, the answer logits in float64); the company
changes only a batch's row count, the M of each matrix product, and a product gives a row the
same bits for any M when its kernel does not split the sum over K: so on CPU (tests/unit/
test_cope.py checks it bit for bit), and on CUDA under `fix_cuda_reductions` (bench/gpu/
bench_cope.py measures it there).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from models.cope_prompt import PROMPT_END, build_prompt, fit_content, prompt_head
from models.cope_settings import CopeSettings, cope_model_name
from models.scoring import EMPTY_TRANSCRIPT, PolicyScore, is_empty

log = logging.getLogger(__name__)

# Tokens left out of the cached prefix at its end: BPE may merge the template's last characters
# with the content's first ones, so only the head before them is the same for every content.
PREFIX_SLACK_TOKENS = 4
# Head tokens before the cut that are tokenized again with each content (see _tails).
ANCHOR_TOKENS = 8


@dataclass
class CallStats:
    """What the last score() call ran: its items' own tail tokens and, with bucket padding, all
    (the bench reports the difference as waste); batches that ran out of GPU memory and ran
    again in halves; contents whose prompt was tokenized whole (the cut check failed)."""

    tokens_real: int = 0
    tokens_run: int = 0
    out_of_memory: int = 0
    whole_prompts: int = 0


@dataclass(frozen=True)
class Batch:
    """Items (positions in a call's list) of one width bucket: len(items) rows of `width` tokens."""

    items: tuple[int, ...]
    width: int


@dataclass(frozen=True)
class Tail:
    """A content's tokens after the cached prefix (prefixed), or its whole prompt's."""

    ids: list[int]
    prefixed: bool
    truncated: bool = False


@dataclass(frozen=True)
class PolicyHead:
    """A policy's tokens up to the cut, made once per policy."""

    prefix: list[int]  # run once per call; empty when the head is too short to share
    anchor: str  # the head's text from ANCHOR_TOKENS before the cut on
    anchor_ids: list[int]  # its tokens before the cut


def bucket_width(length: int, bucket_tokens: int) -> int:
    return max(1, math.ceil(length / bucket_tokens)) * bucket_tokens


def plan_batches(lengths: Sequence[int], rows_for_width: Callable[[int], int], bucket_tokens: int) -> list[Batch]:
    """Items grouped by their own width bucket, in length order, up to rows_for_width(width) per
    batch. A batch has as many rows as items: no filler rows (its row count changes no score)."""
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        groups.setdefault(bucket_width(lengths[i], bucket_tokens), []).append(i)
    batches = []
    for width, members in sorted(groups.items()):
        rows = rows_for_width(width)
        batches += [Batch(tuple(members[s : s + rows]), width) for s in range(0, len(members), rows)]
    return batches


class CopeScorer:
    """Implements PolicyScorer for CoPE-A (a Gemma-2 causal LM that answers "0"/"1")."""

    def __init__(self, model: Any, tokenizer: Any, settings: CopeSettings, model_name: str):
        self.model, self.tokenizer, self.settings, self.model_name = model, tokenizer, settings, model_name
        self.device = next(model.parameters()).device
        if self.device.type == "cuda":
            fix_cuda_reductions()
        self.decoder = model.get_decoder()
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.softcap = config.attn_logit_softcapping
        self.final_softcap = config.final_logit_softcapping
        kinds = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
        self.windows = [config.sliding_window if kind == "sliding_attention" else None for kind in kinds]
        # The final norm and the "0"/"1" rows of the output embedding, in float64 (see _answer).
        norm = self.decoder.norm
        self.norm_scale, self.norm_eps = 1.0 + norm.weight.detach().double(), norm.eps
        output = model.get_output_embeddings().weight.detach()
        self.answers = output[answer_token_ids(tokenizer)].double()
        self.pad_id = tokenizer.pad_token_id or 0  # any id: pads come after every token that counts
        self.batch_tokens = settings.batch_tokens or (2048 if self.device.type == "cuda" else 1024)
        self.softmax = _CompiledForward(joint_softmax) if _compiles(settings, self.device) else joint_softmax
        self._heads: dict[str, PolicyHead] = {}
        self.last_call = CallStats()

    def score(self, policy: str, contents: Sequence[str]) -> list[PolicyScore]:
        results: list[PolicyScore | None] = [EMPTY_TRANSCRIPT if is_empty(c) else None for c in contents]
        wanted = [i for i, result in enumerate(results) if result is None]
        self.last_call = CallStats()
        if not wanted:
            return results  # type: ignore[return-value]
        with torch.inference_mode():
            head = self._head(policy)
            # Queued before the tokenizer runs: on a GPU the prefix runs while contents are tokenized.
            prefix = self._prefix(head.prefix)
            tails = self._tails(policy, head, [contents[i] for i in wanted])
            batches = self._p1(prefix, tails)
        probs = torch.cat([p1 for _, p1 in batches]).tolist()  # the call's one wait for the device
        for k, p in zip([k for items, _ in batches for k in items], probs):
            results[wanted[k]] = PolicyScore(score=p, truncated=tails[k].truncated)
        return results  # type: ignore[return-value]

    # --- tokens ----------------------------------------------------------------------------

    def _head(self, policy: str) -> PolicyHead:
        if policy not in self._heads:
            text = prompt_head(policy)
            encoded = self.tokenizer(text, return_offsets_mapping=True)
            ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
            cut = len(ids) - PREFIX_SLACK_TOKENS
            start = cut - ANCHOR_TOKENS
            head = (
                PolicyHead(ids[:cut], text[offsets[start][0] :], ids[start:cut])
                if start >= 1
                else PolicyHead([], "", [])
            )
            if len(self._heads) >= 64:
                self._heads.clear()
            self._heads[policy] = head
        return self._heads[policy]

    def _tails(self, policy: str, head: PolicyHead, texts: list[str]) -> list[Tail]:
        """Every content's tokens after the prefix from one batched tokenizer call over anchor +
        content + template end (~200 tokens a content, not a whole prompt's ~1,200). The cut
        must fall where it falls in the whole prompt: a content that changes any anchor token
        (its tokens reaching back towards the cut) is tokenized whole, as the model card does."""
        encoded = self.tokenizer([head.anchor + t + PROMPT_END for t in texts], add_special_tokens=False)
        tails = []
        for text, ids in zip(texts, encoded["input_ids"]):
            tail = self._tail(policy, head, text, ids)
            if len(tail.ids) + (len(head.prefix) if tail.prefixed else 0) > self.settings.max_tokens:
                fitted, _ = fit_content(self.tokenizer, policy, text, self.settings.max_tokens)
                fitted_ids = self.tokenizer(head.anchor + fitted + PROMPT_END, add_special_tokens=False)["input_ids"]
                tail = replace(self._tail(policy, head, fitted, fitted_ids), truncated=True)
            tails.append(tail)
        return tails

    def _tail(self, policy: str, head: PolicyHead, text: str, ids: list[int]) -> Tail:
        anchor = len(head.anchor_ids)
        if head.prefix and ids[:anchor] == head.anchor_ids:
            return Tail(ids[anchor:], True)
        self.last_call.whole_prompts += 1
        whole = self.tokenizer(build_prompt(policy, text))["input_ids"]
        if head.prefix and whole[: len(head.prefix)] == head.prefix:
            return Tail(whole[len(head.prefix) :], True)
        return Tail(whole, False)  # runs from scratch; its shapes still depend on nothing but itself

    def _device_tensor(self, rows: list) -> torch.Tensor:
        """Host lists on the device without waiting: copied from pinned memory in stream order."""
        tensor = torch.tensor(rows, dtype=torch.long)
        return tensor.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else tensor

    # --- batches ---------------------------------------------------------------------------

    def _prefix(self, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Every layer's (keys, values) of the prefix, each (kv_heads, tokens, head_dim)."""
        if not ids:
            return None
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._forward(self._device_tensor([ids]), None, kept)
        return kept

    def _p1(self, prefix: list | None, tails: list[Tail]) -> list[tuple[list[int], torch.Tensor]]:
        """(tails, their p("1") left on the device) for every batch run."""
        done: list[tuple[list[int], torch.Tensor]] = []
        for prefixed in (True, False):
            group = [k for k, tail in enumerate(tails) if tail.prefixed == prefixed]
            lengths = [len(tails[k].ids) for k in group]
            for batch in plan_batches(lengths, self._rows_for_width, self.settings.bucket_tokens):
                items = [group[i] for i in batch.items]
                self._run_batch(items, batch.width, tails, prefix if prefixed else None, done)
        return done

    def _rows_for_width(self, width: int) -> int:
        # From the settings and the device type only, never free memory: workers plan alike.
        return max(1, min(self.settings.max_batch_rows, self.batch_tokens // width))

    def _run_batch(self, items: list[int], width: int, tails: list[Tail], prefix: list | None, done: list) -> None:
        """Runs `items` as one batch; out of GPU memory, runs them again in halves. The retry
        starts after the except clause has ended, so nothing of the failed batch is still
        referenced, and only this batch is split: the plan, and so the shapes of every later
        batch, stay as they are (fewer rows change no score)."""
        pending = [items]
        while pending:
            part = pending.pop()
            p1 = _unless_out_of_memory(self._run_rows, part, width, tails, prefix)
            if p1 is not None:
                done.append((part, p1))
                continue
            self.last_call.out_of_memory += 1
            if len(part) == 1:
                raise torch.cuda.OutOfMemoryError(f"CoPE-A: one row of {width} tokens does not fit in GPU memory")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("CoPE batch of %d x %d tokens ran out of GPU memory; running it in halves", len(part), width)
            pending += [part[len(part) // 2 :], part[: len(part) // 2]]

    def _run_rows(self, items: list[int], width: int, tails: list[Tail], prefix: list | None) -> torch.Tensor:
        # Right-padded: pads come after every token a real token attends to, so no mask per row.
        rows = [tails[k].ids + [self.pad_id] * (width - len(tails[k].ids)) for k in items]
        last = self._device_tensor([r * width + len(tails[k].ids) - 1 for r, k in enumerate(items)])
        p1 = self._answer(self._forward(self._device_tensor(rows), prefix)[last])
        self.last_call.tokens_real += sum(len(tails[k].ids) for k in items)
        self.last_call.tokens_run += len(items) * width
        return p1

    # --- the model ---------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, prefix: list | None, keep: list | None = None) -> torch.Tensor:
        """Last hidden states (before the final norm), (rows x width, hidden), of rows of tokens
        that follow the prefix (or start the prompt: prefix None); `keep` collects each layer's
        keys and values. Tokens stay flat outside attention: a compiled norm or MLP never sees
        a size-1 dimension (one row), which torch.compile would specialise into other kernels."""
        rows, width = ids.shape
        start = 0 if prefix is None else prefix[0][0].shape[1]
        embed = self.decoder.embed_tokens
        hidden = embed(ids.view(-1))
        if not hasattr(embed, "embed_scale"):  # transformers 4 scales in Gemma2Model.forward, 5 in the embedding
            hidden = hidden * torch.tensor(self.model.config.hidden_size**0.5, dtype=hidden.dtype)
        cos, sin = self.decoder.rotary_emb(hidden, torch.arange(start, start + width, device=self.device)[None])
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # over the heads of (rows, width, heads, dim)
        masks = {window: attention_masks(start, width, window, self.device) for window in set(self.windows)}
        for layer, window, layer_prefix in zip(self.decoder.layers, self.windows, prefix or [None] * len(self.windows)):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = _rotary(attention.q_proj(x).view(rows, width, self.heads, self.head_dim), cos, sin)
            k = _rotary(attention.k_proj(x).view(rows, width, self.kv_heads, self.head_dim), cos, sin)
            v = attention.v_proj(x).view(rows, width, self.kv_heads, self.head_dim)
            if keep is not None:
                keep.append((k[0].transpose(0, 1).contiguous(), v[0].transpose(0, 1).contiguous()))
            out = prefix_attention(q, k, v, layer_prefix, masks[window], self.scaling, self.softcap, self.softmax)
            hidden = hidden + layer.post_attention_layernorm(attention.o_proj(out.view(rows * width, -1)))
            hidden = hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))
        return hidden

    def _answer(self, hidden: torch.Tensor) -> torch.Tensor:
        """p("1") from last tokens' hidden states: the final RMS norm and the two answer logits
        in float64 (exact products; a float32 result rounded from it has the same bits in
        whatever order a kernel sums, short of a 1e-12 tie), Gemma-2's final soft-cap."""
        x = hidden.double()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm_eps) * self.norm_scale
        logits = (normed @ self.answers.T).float()
        if self.final_softcap:  # tanh(x / c) * c
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return torch.softmax(logits, dim=-1)[:, 1]


def _unless_out_of_memory(run: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor | None:
    """run(*args), or None when it ran out of GPU memory; the exception and its frames end here."""
    try:
        return run(*args)
    except torch.cuda.OutOfMemoryError:
        pass
    return None


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, transformers' apply_rotary_pos_emb operation for operation."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


# --- attention ------------------------------------------------------------------------------


def attention_masks(start: int, width: int, window: int | None, device: torch.device):
    """Additive float masks (0 or -inf) for `width` tail queries at positions start, start+1, ...:
    over the prefix's `start` keys (None when every one is visible) and over the tail's keys,
    each (width, 1, keys), to broadcast over rows and each KV head's query heads. Causal, and in
    a sliding-window layer a query at position p sees keys p - window < k <= p (transformers'
    sliding_window_overlay). The same for every row: tails are right-padded."""
    query = torch.arange(width, device=device)[:, None]
    key = torch.arange(width, device=device)[None, :]
    hidden = key > query
    if window:
        hidden |= key <= query - window
    tail = torch.zeros(width, 1, width, device=device).masked_fill(hidden[:, None, :], -math.inf)
    if not window or start == 0 or start + width <= window:
        return None, tail
    prefix_hidden = torch.arange(start, device=device)[None, :] <= start + query - window
    return torch.zeros(width, 1, start, device=device).masked_fill(prefix_hidden[:, None, :], -math.inf), tail


def prefix_attention(q, k, v, prefix, masks, scaling: float, softcap: float | None, softmax=None) -> torch.Tensor:
    """Attention of rows of tail tokens over one shared prefix and each row's own tail.

    q: (rows, width, heads, dim), k and v: (rows, width, kv_heads, dim), rotary applied;
    prefix: (keys, values), each (kv_heads, prefix tokens, dim), the same for every row, or None;
    masks: attention_masks(). Returns (rows, width, heads * dim), what o_proj takes.

    A KV head's query heads are stacked on its rows (no repeat_kv copies); the prefix scores are
    one product of every row's queries with the one prefix K (no per-row copy of it); one
    softmax runs over prefix and tail keys together; the two value products meet in a baddbmm."""
    rows, width, heads, dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    stacked = q.view(rows, width, kv_heads, groups, dim).permute(2, 0, 1, 3, 4).reshape(kv_heads, rows, -1, dim)
    # Scores as (kv_heads x rows, width x groups, keys): no size-1 dimension for one row, which
    # the compiled softmax would otherwise get specialised (other kernels) code for.
    tail_scores = torch.matmul(stacked, k.permute(2, 0, 3, 1)).view(kv_heads * rows, -1, width)
    prefix_scores = None
    if prefix is not None:
        prefix_scores = torch.matmul(stacked.view(kv_heads, -1, dim), prefix[0].transpose(1, 2))
        prefix_scores = prefix_scores.view(kv_heads * rows, width * groups, -1)
    prefix_mask, tail_mask = masks
    prefix_probs, tail_probs = (softmax or joint_softmax)(
        prefix_scores, tail_scores, prefix_mask, tail_mask, scaling, softcap
    )
    out = torch.matmul(tail_probs.view(kv_heads, rows, -1, width), v.permute(2, 0, 1, 3))
    if prefix is not None:
        prefix_probs = prefix_probs.view(kv_heads, -1, prefix[0].shape[1])
        out = torch.baddbmm(out.view(kv_heads, -1, dim), prefix_probs, prefix[1])
    return out.view(kv_heads, rows, width, groups, dim).permute(1, 2, 0, 3, 4).reshape(rows, width, heads * dim)


def joint_softmax(prefix_scores, tail_scores, prefix_mask, tail_mask, scaling: float, softcap: float | None):
    """Probabilities over prefix + tail keys of the soft-capped scores, in float32 and in eager
    attention's order (scale, cap, mask), returned as the two blocks in the scores' dtype and
    shapes, (kv_heads x rows, width x groups, keys)."""
    blocks, width = tail_scores.shape[0], tail_scores.shape[-1]
    tail = _capped(tail_scores.view(blocks, width, -1, width), scaling, softcap) + tail_mask
    if prefix_scores is None:
        return None, torch.softmax(tail, dim=-1).to(tail_scores.dtype).view(tail_scores.shape)
    prefix = _capped(prefix_scores.view(blocks, width, -1, prefix_scores.shape[-1]), scaling, softcap)
    if prefix_mask is not None:
        prefix = prefix + prefix_mask
    top = torch.maximum(prefix.amax(-1, keepdim=True), tail.amax(-1, keepdim=True))
    prefix, tail = torch.exp(prefix - top), torch.exp(tail - top)
    total = prefix.sum(-1, keepdim=True) + tail.sum(-1, keepdim=True)
    dtype = tail_scores.dtype
    return (prefix / total).to(dtype).view(prefix_scores.shape), (tail / total).to(dtype).view(tail_scores.shape)


def _capped(scores: torch.Tensor, scaling: float, softcap: float | None) -> torch.Tensor:
    x = scores.float() * scaling
    return torch.tanh(x / softcap) * softcap if softcap else x


def fix_cuda_reductions() -> None:
    """Sums on CUDA in one order whatever M (the rows a batch happens to have): matrix products
    without split-K (torch >= 2.10 can switch it off, in cuBLASLt only), reduced-precision
    partial sums or TF32, with one cuBLAS workspace size; deterministic algorithms, which also
    make inductor pick its reduction kernels' configs by rule, not by timing them. The
    environment variables count only before the process's first cuBLAS call (deploy/ sets
    them for the GPU worker). Process-wide, like every torch.backends switch."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("CUBLASLT_WORKSPACE_SIZE", "32768")  # KiB
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]  # no NaN fills
    matmul = torch.backends.cuda.matmul
    matmul.allow_tf32 = False
    try:
        matmul.allow_bf16_reduced_precision_reduction = (False, False)
        matmul.allow_fp16_reduced_precision_reduction = (False, False)
        torch.backends.cuda.preferred_blas_library("cublaslt")
        if torch.cuda.is_available():  # a product cuBLASLt cannot run this way fails here, not mid-call
            probe = torch.ones(2, 16, 16, device="cuda", dtype=torch.bfloat16)
            torch.baddbmm(probe, probe, probe), torch.matmul(probe, probe[0])
    except (TypeError, RuntimeError) as error:  # torch < 2.10 takes a bool: no switch for split-K
        log.info("split-K stays allowed in cuBLAS (%s)", error)
        matmul.allow_bf16_reduced_precision_reduction = False
        matmul.allow_fp16_reduced_precision_reduction = False


# --- preparing the model ----------------------------------------------------------------------


def prepare_model(model: Any, settings: CopeSettings) -> Any:
    """A loaded (base or PEFT) model made ready to score: adapter merged where the weights
    allow it, norms and MLPs compiled where settings say, eval mode."""
    if settings.merge_adapter and settings.quantization == "none" and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    compile_layer_parts(model, _compiles(settings, next(model.parameters()).device))
    return model.eval()


def _compiles(settings: CopeSettings, device: torch.device) -> bool:
    return settings.compile_layers == "on" or (settings.compile_layers == "auto" and device.type == "cuda")


def compile_layer_parts(model: Any, on: bool = True) -> None:
    """Regional compilation: each decoder layer's parts but its attention (the norms, the MLP)
    run through torch.compile, a norm one kernel instead of eight passes over the activations.
    All layers share the parts' code, so one compilation (dynamic shapes) serves them all. A
    compiler failure at the first call falls back to the plain forward for good."""
    for layer in model.get_decoder().layers:
        for part in layer.children():
            if on and part is not layer.self_attn and not isinstance(part.__dict__.get("forward"), _CompiledForward):
                part.forward = _CompiledForward(part.forward)


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_settings(settings)
    device = _pick_device(settings.device)
    if device.type == "cuda":
        fix_cuda_reductions()  # before the load's first product: the workspace settings count from then
    base_path = resolve_model_path(settings.base_model, settings.models_root)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        attn_implementation="eager",  # never runs (prefix_attention does); needs nothing installed
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
    if settings.quantization not in ("none", "8bit", "4bit"):
        raise ValueError(f"quantization must be none, 8bit or 4bit, not {settings.quantization!r}")
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
