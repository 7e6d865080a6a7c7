"""The SQL the code runs, kept as files: sql/queries/{concern}.sql, one named block per query.

    -- name: claim_version
    -- The run's archive version becomes current unless a newer one already is.
    UPDATE archives SET ...

A block runs from its `-- name:` line to the next one (or the end of the file). Code asks for
`queries("archives").claim_version`; it never builds SQL. Parameters are always bound by the
driver (%(name)s), never formatted into the text. The pattern is the one yesql/aiosql use,
in a few lines instead of a dependency.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from types import MappingProxyType

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class NamedQuery(str):
    """SQL text that came from a `-- name:` block of sql/queries/, never built in code: the
    type lets the data layer refuse anything else (ResultsDatabase.rows)."""


class NamedQueries:
    """The queries of one file, as attributes: `queries("audio_files").mark_converted`."""

    def __init__(self, concern: str, blocks: dict[str, NamedQuery]):
        self._concern = concern
        self._blocks = MappingProxyType(blocks)

    def __getattr__(self, name: str) -> NamedQuery:
        try:
            return self._blocks[name]
        except KeyError:
            raise AttributeError(f"sql/queries/{self._concern}.sql has no query named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._blocks)


def parse_named_queries(concern: str, text: str) -> NamedQueries:
    matches = list(_NAME_LINE.finditer(text))
    if not matches:
        raise ValueError(f"sql/queries/{concern}.sql names no queries (expected '-- name: ...' lines)")
    blocks: dict[str, NamedQuery] = {}
    for match, following in zip(matches, matches[1:] + [None]):
        name = match.group(1)
        if name in blocks:
            raise ValueError(f"sql/queries/{concern}.sql names {name!r} twice")
        body = text[match.end() : following.start() if following else len(text)].strip()
        if not body:
            raise ValueError(f"sql/queries/{concern}.sql: query {name!r} is empty")
        blocks[name] = NamedQuery(body)
    return NamedQueries(concern, blocks)


@functools.cache
def queries(concern: str) -> NamedQueries:
    """The named queries of sql/queries/{concern}.sql (read once per process)."""
    text = (resources.files("sql") / "queries" / f"{concern}.sql").read_text(encoding="utf-8")
    return parse_named_queries(concern, text)
