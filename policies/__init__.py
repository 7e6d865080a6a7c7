"""CoPE policy texts, one Markdown file per category, shipped as package data.

The file stem is the policy's name (`hate_speech.md` -> "hate_speech"); that name is what
classification rows store. Each text follows the CoPE policy layout (overview, terms,
interpretation, one label with includes and excludes) because the model was tuned on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path


def policy_names(directory: str | Path | None = None) -> list[str]:
    """Every policy in `directory` (the packaged ones when None), sorted."""
    return sorted(entry.name[: -len(".md")] for entry in _source(directory).iterdir() if entry.name.endswith(".md"))


def load_policies(names: Iterable[str] | None = None, directory: str | Path | None = None) -> dict[str, str]:
    """{name: policy text} for `names` (all policies when None), in the order asked.

    `directory` replaces the packaged texts with a folder of `<name>.md` files, so the people
    who own a policy can revise it without a release; the classifications of a revised policy
    then show as stale in Dagster (their code version hashes the texts) and are re-scored."""
    known = policy_names(directory)
    wanted = known if names is None else list(names)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known policies are {known}")
    source = _source(directory)
    return {name: source.joinpath(f"{name}.md").read_text(encoding="utf-8") for name in wanted}


def _source(directory: str | Path | None):
    return files(__package__) if directory is None else Path(directory).expanduser()
