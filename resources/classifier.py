"""Content-policy classification behind one ConfigurableResource.

backend "cope-a" is the production model (Gemma-2-9B + the CoPE-A LoRA adapter) scoring each
transcript against each policy in policies/. backend "profanity" is a small CPU classifier
whose weights ship in a PyPI wheel, for demos on machines without a GPU; it knows a single
category, "profanity", and its rows carry its own model name so nobody mistakes its flags
for CoPE-A's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
from pydantic import Field

from models.cope_settings import CopeSettings, cope_model_name
from models.profanity_scorer import load_profanity_scorer, profanity_model_name
from models.scoring import PolicyScorer
from policies import load_policies

DEFAULT_POLICIES = ["hate_speech", "harassment_threats", "sexual_content", "self_harm", "violent_extremism"]


class PolicyClassifier(dg.ConfigurableResource):
    backend: str = Field(default="cope-a", description="cope-a | profanity")
    policies: list[str] = Field(default=DEFAULT_POLICIES, description="Policy files (policies/*.md) to score")
    policies_dir: str | None = Field(
        default=None, description="A folder of <policy>.md texts used instead of the packaged ones"
    )
    threshold: float = Field(default=0.5, description="flagged = score >= threshold")
    base_model: str = Field(default="google/gemma-2-9b", description="Name under models_root or a local dir")
    adapter: str | None = Field(default="zentropi-ai/cope-a-9b", description="LoRA adapter name or dir")
    models_root: str | None = None
    device: str = "auto"
    quantization: str = Field(default="none", description="none | 8bit | 4bit (GPU + bitsandbytes)")
    max_tokens: int = Field(default=8192, description="Prompt budget; content is truncated, never the policy")
    batch_tokens: int = Field(default=0, description="Content tokens per forward pass; 0 = 2048 on CUDA, 1024 on CPU")

    def categories(self) -> dict[str, str]:
        """{category: policy text} this backend scores."""
        if self.backend == "profanity":
            return {"profanity": ""}
        return load_policies(self.policies, self.policies_dir)

    def model_name(self) -> str:
        """What rows record as `model`, known without loading the model."""
        if self.backend == "profanity":
            return profanity_model_name()
        return cope_model_name(self._cope_settings())

    def policy_versions(self) -> dict[str, str]:
        """{category: version}: a short hash of the policy text, stored with every score so a
        changed policy is re-scored and an unchanged one is not."""
        return {category: policy_version(text) for category, text in self.categories().items()}

    def load(self) -> PolicyScorer:
        """The process-wide scorer for these settings: loaded on first use, then reused."""
        if self.backend == "profanity":
            return load_profanity_scorer()
        if self.backend != "cope-a":
            raise ValueError(f"unknown classifier backend {self.backend!r}; expected cope-a or profanity")
        from models.cope_scorer import load_cope_scorer  # imports torch: only when the model loads

        return load_cope_scorer(self._cope_settings())

    def _cope_settings(self) -> CopeSettings:
        return CopeSettings(
            base_model=self.base_model,
            adapter=self.adapter,
            models_root=str(Path(self.models_root).expanduser()) if self.models_root else None,
            device=self.device,
            quantization=self.quantization,
            max_tokens=self.max_tokens,
            batch_tokens=self.batch_tokens,
        )


def policy_version(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
