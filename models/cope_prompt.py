"""The CoPE-A prompt, and fitting content into the model's context without touching the policy.

The template is the model card's (zentropi-ai/cope-a-9b) character for character: the model was
fine-tuned on exactly this text, so a changed blank line is a different (worse) classifier.
"""

from __future__ import annotations

from typing import Any

COPE_TEMPLATE = """INSTRUCTIONS
============

Examine the given POLICY and determine if the given CONTENT meets the criteria for ANY of the LABELS. Answer "1" if yes, and "0" if no.


POLICY
======

{policy}


CONTENT
=======

{content}


ANSWER
======

"""


class PromptTooLongError(ValueError):
    """The policy alone leaves no room for content in the model's context."""


def build_prompt(policy: str, content: str) -> str:
    # str.format does not re-read its arguments, so braces in policy or content are safe.
    return COPE_TEMPLATE.format(policy=policy, content=content)


def prompt_head(policy: str) -> str:
    """The prompt up to where the content starts: the same for every content under `policy`."""
    return COPE_TEMPLATE[: COPE_TEMPLATE.index("{content}")].format(policy=policy)


# The prompt after the content: the same for every prompt (no placeholder in it).
PROMPT_END = COPE_TEMPLATE[COPE_TEMPLATE.index("{content}") + len("{content}") :]


def prompt_token_count(tokenizer: Any, prompt: str) -> int:
    """Tokens the model sees for `prompt`, special tokens (Gemma's <bos>) included."""
    return len(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def fit_content(tokenizer: Any, policy: str, content: str, max_tokens: int = 8192) -> tuple[str, bool]:
    """Cut `content` (never the policy) so the whole prompt is at most `max_tokens` tokens.

    Returns (content, truncated). The head of the content is kept, cut at a token boundary.
    Token counts are taken on the full prompt, so merges across the template's edges count.
    """
    overhead = prompt_token_count(tokenizer, build_prompt(policy, ""))
    if overhead >= max_tokens:
        raise PromptTooLongError(
            f"the policy and template alone take {overhead} tokens, which leaves no room for "
            f"content within max_tokens={max_tokens}; shorten the policy or split it in two"
        )
    if prompt_token_count(tokenizer, build_prompt(policy, content)) <= max_tokens:
        return content, False
    ends = _token_end_offsets(tokenizer, content)
    keep = min(len(ends), max_tokens - overhead)
    while keep > 0:
        head = content[: ends[keep - 1]]
        excess = prompt_token_count(tokenizer, build_prompt(policy, head)) - max_tokens
        if excess <= 0:
            return head, True
        keep -= excess  # boundary merges differ by a token or two: one or two more rounds
    return "", True


def _token_end_offsets(tokenizer: Any, text: str) -> list[int]:
    """Character offset where each token of `text` ends (a safe place to cut it)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("fit_content needs a fast tokenizer (offsets); AutoTokenizer gives one for Gemma")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [end for _start, end in enc["offset_mapping"]]
