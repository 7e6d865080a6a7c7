"""The CoPE-A scoring path as it was at 8163a98 (before issue 24), kept only so that
bench_cope.py can measure old and new in one run on one card. Its defaults, fixed here: width
buckets of 32 tokens with a fixed row count per width (filler rows), rows also capped by 60 % of
the free GPU memory, transformers' decoder with the prefix KV cache expanded over the rows as
views (concatenated with each batch's keys in every layer), `softcap_attention` registered as
the model's attention, a `.tolist()` per batch. Code trimmed to that path, otherwise as it was.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from models.cope_prompt import build_prompt, prompt_head
from models.cope_scorer import PREFIX_SLACK_TOKENS, CallStats, answer_token_ids

BUCKET_TOKENS, MAX_BATCH_ROWS = 32, 64


@dataclass(frozen=True)
class Batch:
    items: tuple[int, ...]
    width: int
    rows: int


def plan_batches(lengths, rows_for_width) -> list[Batch]:
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        groups.setdefault(max(1, math.ceil(lengths[i] / BUCKET_TOKENS)) * BUCKET_TOKENS, []).append(i)
    batches = []
    for width, members in sorted(groups.items()):
        rows = rows_for_width(width)
        batches += [Batch(tuple(members[s : s + rows]), width, rows) for s in range(0, len(members), rows)]
    return batches


class CopeScorerBefore:
    """score(policy, contents) -> p("1") per content, as 8163a98 computed it (no empty-content
    handling or truncation: the bench sends neither)."""

    def __init__(self, model: Any, tokenizer: Any):
        _use_softcap_attention(model)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.answer_ids = answer_token_ids(tokenizer)
        self.decoder, self.lm_head = model.get_decoder(), model.get_output_embeddings()
        self.final_softcap = getattr(model.config, "final_logit_softcapping", None)
        self.batch_tokens = 2048 if self.device.type == "cuda" else 1024
        self.memory_budget = _memory_budget(self.device)
        self._row_cost = _row_cost(model.config, next(model.parameters()).element_size())
        self.last_call = CallStats()

    @torch.inference_mode()
    def score(self, policy: str, contents: list[str]) -> list[float]:
        self.last_call = CallStats()
        prompts = self.tokenizer([build_prompt(policy, c) for c in contents])["input_ids"]
        head = self.tokenizer(prompt_head(policy))["input_ids"]
        shared = max(0, len(head) - PREFIX_SLACK_TOKENS)
        if not all(len(ids) > shared and ids[:shared] == head[:shared] for ids in prompts):
            raise ValueError("the bench's contents all share the policy prefix")
        prefix = self.decoder(input_ids=self._tensor([head[:shared]]), use_cache=True).past_key_values
        tails = [ids[shared:] for ids in prompts]
        probs = [0.0] * len(tails)
        for batch in plan_batches([len(t) for t in tails], lambda w: self._rows_for_width(w, shared)):
            rows = [tails[i] for i in batch.items]
            for i, p in zip(batch.items, self._run_tails(rows, prefix, shared, batch.width, batch.rows)):
                probs[i] = p
        return probs

    def _run_tails(self, rows, prefix, shared, width, n_rows) -> list[float]:
        filled = rows + [rows[-1]] * (n_rows - len(rows))
        ids, tail_mask = self._pad(filled, width)
        mask = torch.cat([torch.ones(n_rows, shared, dtype=tail_mask.dtype, device=self.device), tail_mask], 1)
        positions = shared + torch.arange(width, device=self.device).expand_as(ids)
        self.last_call.tokens_real += sum(len(r) for r in rows)
        self.last_call.tokens_run += n_rows * width
        hidden = self.decoder(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=_expanded_cache(prefix, n_rows),
            use_cache=True,
        ).last_hidden_state
        picked = hidden[torch.arange(len(ids), device=ids.device), tail_mask.sum(1) - 1]
        logits = self.lm_head(picked)[:, self.answer_ids].float()
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return torch.softmax(logits, dim=-1)[:, 1].tolist()[: len(rows)]

    def _rows_for_width(self, width: int, shared: int) -> int:
        by_memory = self.memory_budget // max(1, self._row_cost(shared, width))
        return max(1, min(MAX_BATCH_ROWS, self.batch_tokens // width, by_memory))

    def _tensor(self, rows) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _pad(self, rows, width):
        pad_id = self.tokenizer.pad_token_id or 0
        ids = [row + [pad_id] * (width - len(row)) for row in rows]
        mask = [[1] * len(row) + [0] * (width - len(row)) for row in rows]
        return self._tensor(ids), self._tensor(mask)


def _expanded_cache(prefix: Any, rows: int) -> Any:
    cache = copy.copy(prefix)
    cache.layers = []
    for layer in prefix.layers:
        view = copy.copy(layer)
        view.keys = layer.keys.expand(rows, -1, -1, -1)
        view.values = layer.values.expand(rows, -1, -1, -1)
        cache.layers.append(view)
    return cache


def _memory_budget(device: torch.device) -> int:
    if device.type != "cuda":
        return 4 << 30
    free, _total = torch.cuda.mem_get_info(device)
    return 1 << int(math.log2(max(1 << 20, int(free * 0.6))))


def _row_cost(config: Any, element_bytes: int):
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads, hidden, head_dim = config.num_key_value_heads, config.hidden_size, config.head_dim
    kv_per_token = 2 * layers * kv_heads * head_dim * element_bytes
    activations_per_token = element_bytes * (6 * hidden + 3 * config.intermediate_size)

    def cost(shared: int, width: int) -> int:
        keys = shared + width
        return kv_per_token * keys + activations_per_token * width + width * heads * keys * (element_bytes + 4)

    return cost


def softcap_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    stacked = query.reshape(batch, kv_heads, groups * length, dim)
    scores = torch.matmul(stacked, key.transpose(2, 3)).view(batch, kv_heads, groups, length, keys)
    mask = attention_mask[:, :, None, :, :keys] if attention_mask is not None else None
    softmax = _COMPILED[0] if query.is_cuda else _capped_softmax
    probs = softmax(scores, mask, float(scaling if scaling is not None else dim**-0.5), softcap)
    out = torch.matmul(probs.view(batch, kv_heads, groups * length, keys), value)
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def _capped_softmax(scores, mask, scaling: float, softcap):
    x = scores.float() * scaling
    if softcap is not None:
        x = torch.tanh(x / softcap) * softcap
    if mask is not None:
        x = x + mask
    return torch.softmax(x, dim=-1).to(scores.dtype)


_COMPILED = [torch.compile(_capped_softmax, dynamic=True)]


def _use_softcap_attention(model: Any) -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register("softcap_attention", softcap_attention)
    AttentionMaskInterface.register("softcap_attention", eager_mask)
    if model.config._attn_implementation != "softcap_attention":
        model.set_attn_implementation("softcap_attention")
