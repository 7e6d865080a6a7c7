"""What every content-policy classifier returns, so assets do not care which model ran."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PolicyScore:
    """p(content meets the policy) in [0, 1]; None when the content was not scored (see reason)."""

    score: float | None
    truncated: bool
    reason: str | None = None


EMPTY_TRANSCRIPT = PolicyScore(score=None, truncated=False, reason="empty transcript")


def is_empty(content: str) -> bool:
    # Silence transcribes to "" (or whitespace); a model asked about nothing still answers.
    return not content.strip()


class PolicyScorer(Protocol):
    model_name: str  # stored with every row, so a row says which model produced it

    def score(self, policy: str, contents: Sequence[str]) -> list[PolicyScore]:
        """One score per content, in order."""
        ...
