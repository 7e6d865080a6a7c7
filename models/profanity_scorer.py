"""A small CPU classifier for the demo on machines without a GPU.

`alt-profanity-check` ships a linear SVM over TF-IDF features (scikit-learn) inside its
wheel: nothing to download, milliseconds per transcript. It knows one thing, whether text
is profane or offensive, so it IGNORES the policy text: every policy gets the same score.
Use it to exercise the pipeline end to end, not to classify against the policies.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Sequence

from models.scoring import EMPTY_TRANSCRIPT, PolicyScore, is_empty

PACKAGE = "alt-profanity-check"


class ProfanityScorer:
    """Implements PolicyScorer with alt-profanity-check's bundled model."""

    def __init__(self) -> None:
        from profanity_check import predict_prob  # loads the pickled model on import

        self._predict_prob = predict_prob
        self.model_name = profanity_model_name()

    def score(self, policy: str, contents: Sequence[str]) -> list[PolicyScore]:
        del policy  # see the module docstring: this model has a single, fixed notion of harm
        texts = [content for content in contents if not is_empty(content)]
        probs = iter(self._predict_prob(texts).tolist() if texts else [])
        return [EMPTY_TRANSCRIPT if is_empty(c) else PolicyScore(score=next(probs), truncated=False) for c in contents]


def profanity_model_name() -> str:
    return f"{PACKAGE}-{importlib.metadata.version(PACKAGE)}"


@functools.cache
def load_profanity_scorer() -> ProfanityScorer:
    """One scorer per process (the import unpickles the model)."""
    return ProfanityScorer()
