"""CoPE policy texts, one Markdown file per category, shipped as package data.

The file stem is the policy's name (`hate_speech.md` -> "hate_speech"); that name is what
classification rows store. Each text follows the CoPE policy layout (overview, terms,
interpretation, one label with includes and excludes) because the model was tuned on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files


def policy_names() -> list[str]:
    """Every policy that ships with the package, sorted."""
    return sorted(entry.name[: -len(".md")] for entry in files(__package__).iterdir() if entry.name.endswith(".md"))


def load_policies(names: Iterable[str] | None = None) -> dict[str, str]:
    """{name: policy text} for `names` (all policies when None), in the order asked."""
    known = policy_names()
    wanted = known if names is None else list(names)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known policies are {known}")
    return {name: files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8") for name in wanted}
