"""parquet_metadata's writes: each MP3's parquet row on `audio_files.parquet_metadata`, and the
parquet members' open `metadata` rows of the dead letter, in one fenced transaction."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from resources.results_db import failures
from resources.results_db.database import FencedArchive
from resources.results_db.failures import FileFailure
from sql.named_queries import queries

Q = queries("parquet_metadata")


@dataclass(frozen=True)
class MetadataAssignment:
    original_filename: str
    metadata_source: str
    values: dict[str, Any]


# Documents per statement: a few MB each, so no statement nears PostgreSQL's 1 GB limit however
# many files an archive has (each document is at most max_metadata_row_kb).
_STATEMENT_BYTES = 8 * 2**20
_STATEMENT_ROWS = 1000


def store_metadata(
    run: FencedArchive, assignments: Sequence[MetadataAssignment], problems: Sequence[FileFailure]
) -> int:
    """Attach parquet rows to their files (and NULL to files without one), and make `problems`
    (unreadable or refused members, duplicate meta_id warnings) the open `metadata` rows of the
    parquet members: the step re-reads every member each run, so rows of earlier runs that no
    longer apply are closed. One transaction, written a few MB per statement. Returns the
    number of files that got a row."""

    def store(cur) -> int:
        cur.execute(Q.clear_metadata, {"archive_key": run.archive.key})
        stored = 0
        for chunk in _statements(assignments):
            psycopg2.extras.execute_values(
                cur,
                Q.store_metadata,
                [(run.archive.key, name, source, document) for name, source, document in chunk],
                template="(%s, %s, %s, %s::jsonb)",
                page_size=len(chunk),  # one statement, so rowcount covers the chunk
            )
            stored += cur.rowcount
        still_open = [f.original_filename for f in problems]
        cur.execute(Q.resolve_other_members_of_stage, {"archive_key": run.archive.key, "still_open": still_open})
        failures.record_in(cur, run.archive, problems, run.run_id)
        return stored

    return run.transaction(store, what="store metadata")


def _statements(assignments: Sequence[MetadataAssignment]) -> Iterator[list[tuple[str, str, str]]]:
    """(name, source, JSON document) rows, grouped into statements of bounded size."""
    chunk: list[tuple[str, str, str]] = []
    size = 0
    for m in assignments:
        document = json.dumps(m.values, ensure_ascii=False)
        if chunk and (size + len(document) > _STATEMENT_BYTES or len(chunk) == _STATEMENT_ROWS):
            yield chunk
            chunk, size = [], 0
        chunk.append((m.original_filename, m.metadata_source, document))
        size += len(document)
    if chunk:
        yield chunk
