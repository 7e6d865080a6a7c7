"""RA decisions for analysis, as Parquet or CSV (`audio-pipeline review-export`).

One row per decision in the append-only log, with the item, policy, model, policy version,
score, threshold and whether the item was flagged or a recall-audit item; `standing` marks
each RA's latest decision per item version, the one the views count. RAs appear as their
pseudonym (random per account, stable across exports) unless user names are asked for;
free-text reasons are exported as written (in CSV every field is quoted and a formula
character that could start a cell gets an apostrophe). Runs as the pipeline's owner role: the
console's role cannot read the log's accounts.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sql.named_queries import queries

Q = queries("review_export")
FORMATS = ("parquet", "csv")


def export_decisions(
    results_db, output: str | Path, *, file_format: str | None = None, with_ra_names: bool = False
) -> int:
    """Write the decisions to `output` (format from the suffix unless given); returns the row count."""
    output = Path(output)
    file_format = file_format or output.suffix.lstrip(".").lower()
    if file_format not in FORMATS:
        raise ValueError(
            f"export format {file_format!r}: use one of {', '.join(FORMATS)} (or name the file .parquet/.csv)"
        )

    def read(cur) -> tuple[list[str], list[dict]]:
        cur.execute(Q.decisions, {"with_names": with_ra_names})
        columns = [c.name for c in cur.description]
        return columns, [dict(r) for r in cur.fetchall()]

    columns, rows = results_db.transaction(read, what="export the RA decisions")
    if not with_ra_names:
        columns.remove("ra_username")
        for row in rows:
            del row["ra_username"]
    output.parent.mkdir(parents=True, exist_ok=True)
    if file_format == "parquet":
        table = pa.Table.from_pylist(rows, schema=_schema(columns)) if rows else _schema(columns).empty_table()
        pq.write_table(table, output)
    else:
        with output.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, quoting=csv.QUOTE_ALL)
            writer.writeheader()
            writer.writerows({k: _inert_in_spreadsheets(v) for k, v in row.items()} for row in rows)
    return len(rows)


# A formula character (= + - @) where some reader starts a cell: at the start of the text, or
# after a delimiter a spreadsheet may split on (, ; tab |), a line break or a quote, with
# spaces between. Quoting alone does not help a reader that splits on another delimiter than
# the file's: for it, "a;=1+1" holds a cell "=1+1".
_FORMULA_START = re.compile(r"""(^|[,;\t|\r\n"])(\s*)(?=[=+\-@])""")


def _inert_in_spreadsheets(value):
    """File names and reasons come from uploads and RAs: an apostrophe goes before every
    formula character that starts a cell for some reader, as OWASP advises for CSV, so the
    spreadsheet shows text. Parquet keeps every value verbatim."""
    return _FORMULA_START.sub(r"\1\2'", value) if isinstance(value, str) else value


_TYPES = {
    "decision_id": pa.int64(),
    "item_id": pa.int64(),
    "audio_file_id": pa.int64(),
    "flag_score": pa.float64(),
    "threshold": pa.float64(),
    "flagged": pa.bool_(),
    "standing": pa.bool_(),
    "queued_at": pa.timestamp("us", tz="UTC"),
    "decided_at": pa.timestamp("us", tz="UTC"),
}


def _schema(columns: list[str]) -> pa.Schema:
    """Explicit types, so an export with no rows (or all-NULL thresholds) reads the same."""
    return pa.schema([(name, _TYPES.get(name, pa.string())) for name in columns])
