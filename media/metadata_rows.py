"""Parquet metadata rows, made JSON-safe and joined to MP3 members by meta_id.

Each archive carries parquet files whose `meta_id` column names an MP3 by its file stem
("clips/abc123.mp3" <- meta_id "abc123"). The whole row is stored as JSONB next to the audio,
so every value must survive JSON: nothing is dropped, types JSON lacks are converted.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

META_ID_COLUMN = "meta_id"


class MetadataFileError(Exception):
    """A parquet member that cannot be used at all (not parquet, no meta_id column, over a cap)."""


@dataclass(frozen=True)
class MetadataLimits:
    """Caps on one parquet file, checked from its footer before any data is decoded and again
    while decoding (a footer can lie, and a dictionary page holds a repeated value once): a few
    KB of parquet can hold millions of rows."""

    max_rows: int
    max_inflated_bytes: int  # column data as the footer states it and Arrow decodes it, plus the rows kept
    max_row_bytes: int | None = None  # one row as it is stored (JSON): one file's metadata document


class ArchiveMetadataBudget:
    """The cap on all of one archive's parquet members together: what they may decode and keep,
    counted as each file's caps count (so 40 files each under the per-file caps cannot add up
    without limit). A file that crosses it is refused, and so is every file after it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.spent = 0

    def spend(self, nbytes: int, how: str = "decoding took") -> None:
        self.spent += nbytes
        if self.spent > self.max_bytes:
            raise MetadataFileError(
                f"refused: {how} the archive's parquet data to {self.spent / 2**20:,.1f} MB, over the "
                f"{self.max_bytes / 2**20:,.0f} MB archive cap (max_metadata_archive_mb)"
            )


@dataclass(frozen=True)
class MetadataRow:
    meta_id: str
    values: dict[str, Any]  # the whole row, JSON-safe, meta_id included as stored
    row_index: int  # position in the file, for people tracing a value back


@dataclass(frozen=True)
class MetadataTable:
    rows: tuple[MetadataRow, ...]  # the rows kept (all, or those whose meta_id was wanted)
    rows_without_meta_id: int  # null or blank meta_id: counted, not returned
    rows_read: int = 0
    # Rows whose meta_id was not wanted (no MP3 of the archive has that stem): counted, and the
    # first few named, not kept.
    rows_not_wanted: int = 0
    not_wanted_examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class MatchedMetadata:
    source_member: str  # the parquet member the row came from
    meta_id: str
    values: dict[str, Any]


class DuplicateMetaId(NamedTuple):
    """A row whose meta_id an earlier row already has: the earlier one is kept, this one is not
    stored. Rows count from 0 in file order."""

    meta_id: str
    kept_member: str
    kept_row: int
    ignored_member: str
    ignored_row: int


@dataclass
class MetadataJoin:
    matched: dict[str, MatchedMetadata] = field(default_factory=dict)  # by MP3 member name
    rows_without_mp3: list[tuple[str, str]] = field(default_factory=list)  # (source_member, meta_id), the first ones
    rows_without_mp3_count: int = 0
    mp3s_without_row: list[str] = field(default_factory=list)
    duplicate_meta_ids: list[DuplicateMetaId] = field(default_factory=list)
    ambiguous_stems: list[str] = field(default_factory=list)


def read_metadata_table(
    path: Path,
    limits: MetadataLimits | None = None,
    *,
    wanted: Collection[str] | None = None,
    budget: ArchiveMetadataBudget | None = None,
) -> MetadataTable:
    """Rows of one parquet file, streamed batch by batch: only the rows whose meta_id is in
    `wanted` (all when None) are kept, as JSON-safe values; the others are counted. Raises
    MetadataFileError when it is not parquet, has no meta_id column, or is over a cap of
    `limits` or of the archive's `budget`: first as its footer states (nothing decoded yet),
    then as its batches really decode and its kept rows really weigh.

    Text and binary columns are read as dictionaries, so a batch holds each distinct value
    once however many rows repeat it (a dictionary page is no bomb), and the longest value is
    checked against the row cap before any row becomes Python objects."""
    _check_footer_size(path)
    try:
        schema = pq.read_schema(path)
        parquet = pq.ParquetFile(path, read_dictionary=[f.name for f in schema if _is_text(f.type)] or None)
    except pa.ArrowException as exc:  # a missing file is the caller's bug: FileNotFoundError
        raise MetadataFileError(f"not a parquet file: {exc}") from None
    if META_ID_COLUMN not in schema.names:
        raise MetadataFileError(f"no {META_ID_COLUMN!r} column (columns: {', '.join(schema.names) or 'none'})")
    if limits is not None:
        _check_footer(parquet.metadata, limits, budget)
    read = _Reading(limits, budget, wanted)
    try:
        for group in range(parquet.num_row_groups):
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group]):
                read.add(batch, group)
    except (pa.ArrowException, OSError) as exc:
        raise MetadataFileError(f"unreadable parquet data: {exc}") from None
    finally:
        # Arrow's allocator keeps freed pages for reuse; the next file of the archive would
        # start above them (measured: 95 -> 57 MB of peak RSS over 8 files of 8 MB).
        pa.default_memory_pool().release_unused()
    return read.table()


class _Reading:
    """One file's rows as its batches decode, with the caps counted as they go."""

    def __init__(self, limits: MetadataLimits | None, budget: ArchiveMetadataBudget | None, wanted):
        self.limits, self.budget, self.wanted = limits, budget, wanted
        self.rows: list[MetadataRow] = []
        self.index = self.without_id = self.not_wanted = self.held_bytes = 0
        self.examples: list[str] = []
        self.dictionaries: dict[tuple[int, str], int] = {}  # (row group, column) -> its dictionary's bytes

    def add(self, batch: pa.RecordBatch, group: int) -> None:
        self._hold(self._new_bytes(batch, group), self.index + batch.num_rows)
        if self.limits is not None and self.limits.max_row_bytes is not None:
            _check_longest_value(batch, self.limits.max_row_bytes)
        keep = []
        for offset, raw in enumerate(batch.column(META_ID_COLUMN).to_pylist()):
            meta_id = _meta_id_text(raw)
            if meta_id is None:
                self.without_id += 1
            elif self.wanted is None or meta_id in self.wanted:
                keep.append((offset, meta_id))
            else:
                self.not_wanted += 1
                if len(self.examples) < _EXAMPLES:
                    self.examples.append(meta_id)
        if keep:
            # "lossy": a map with a repeated key keeps its last value, as a JSON object must.
            records = batch.take([offset for offset, _ in keep]).to_pylist(maps_as_pydicts="lossy")
            for (offset, meta_id), record in zip(keep, records):
                values = to_json_safe(record)
                size = len(json.dumps(values, ensure_ascii=False).encode())
                cap = self.limits.max_row_bytes if self.limits is not None else None
                if cap is not None and size > cap:
                    raise MetadataFileError(
                        f"refused: row {self.index + offset} (meta_id {meta_id!r}) is {_size(size)} as JSON, "
                        f"over the {_size(cap)} cap on one row (max_metadata_row_kb)"
                    )
                self._hold(size, self.index + batch.num_rows)
                self.rows.append(MetadataRow(meta_id, values, self.index + offset))
        self.index += batch.num_rows

    def _new_bytes(self, batch: pa.RecordBatch, group: int) -> int:
        """What the batch adds to what the file holds: its columns, but a text column's
        dictionary only by what it grew since the batch before (within a row group Arrow keeps
        one dictionary per column and extends it)."""
        added = 0
        for name, column in zip(batch.schema.names, batch.columns):
            if not pa.types.is_dictionary(column.type):
                added += column.nbytes
                continue
            dictionary = column.dictionary.nbytes
            before = self.dictionaries.get((group, name), 0)
            added += column.indices.nbytes + (dictionary - before if dictionary >= before else dictionary)
            self.dictionaries[(group, name)] = dictionary
        return added

    def _hold(self, nbytes: int, rows: int) -> None:
        self.held_bytes += nbytes
        if self.limits is not None:
            _check_caps(rows, self.held_bytes, self.limits, "decoding reached")
        if self.budget is not None:
            self.budget.spend(nbytes)

    def table(self) -> MetadataTable:
        return MetadataTable(
            rows=tuple(self.rows),
            rows_without_meta_id=self.without_id,
            rows_read=self.index,
            rows_not_wanted=self.not_wanted,
            not_wanted_examples=tuple(self.examples),
        )


def _is_text(kind: pa.DataType) -> bool:
    text_types = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    return any(is_type(kind) for is_type in text_types)


def _check_footer(footer: pq.FileMetaData, limits: MetadataLimits, budget: ArchiveMetadataBudget | None) -> None:
    """The caps as the footer states the file: rows, and column data by the larger of its two
    sums (a row group's total_byte_size, and the uncompressed sizes of its column chunks), so
    one forged field does not hide the data."""
    groups = [footer.row_group(i) for i in range(footer.num_row_groups)]
    by_groups = sum(g.total_byte_size for g in groups)
    by_columns = sum(g.column(j).total_uncompressed_size for g in groups for j in range(g.num_columns))
    stated = max(by_groups, by_columns)
    _check_caps(footer.num_rows, stated, limits, "its footer states")
    if limits.max_row_bytes is not None and footer.num_rows and stated / footer.num_rows > limits.max_row_bytes:
        raise MetadataFileError(
            f"refused: its footer states {_size(stated / footer.num_rows)} of column data a row, over the "
            f"{_size(limits.max_row_bytes)} cap on one row (max_metadata_row_kb)"
        )
    if budget is not None and budget.spent + stated > budget.max_bytes:
        budget.spend(stated, f"its footer states {stated / 2**20:,.1f} MB of column data, which would take")


def _check_longest_value(batch: pa.RecordBatch, max_bytes: int) -> None:
    """Refuse before any row becomes Python objects: the longest text or binary value of the
    batch (each distinct value once: these columns are dictionaries) against the row cap."""
    for name, column in zip(batch.schema.names, batch.columns):
        values = column.dictionary if pa.types.is_dictionary(column.type) else column
        if not _is_text(values.type) or len(values) == 0:
            continue
        longest = pc.max(pc.binary_length(values)).as_py() or 0
        if longest > max_bytes:
            raise MetadataFileError(
                f"refused: a value of column {name!r} is {_size(longest)}, over the {_size(max_bytes)} cap on one "
                "row (max_metadata_row_kb)"
            )


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.0f} KB"


_EXAMPLES = 20  # not-wanted meta_ids named per file


# The footer (schema, row groups, key-value metadata) is parsed whole before anything can be
# checked; a real one of 100,000 rows is kilobytes, so 16 MiB is generous and bounds the parse.
MAX_FOOTER_BYTES = 16 * 2**20


def _check_footer_size(path: Path) -> None:
    """The footer's length, from the file's last 8 bytes (length, then "PAR1"), before pyarrow
    reads it."""
    with path.open("rb") as handle:
        if handle.seek(0, 2) < 12:
            return  # too short to be parquet: pyarrow says so
        handle.seek(-8, 2)
        tail = handle.read(8)
    if tail[4:] == b"PAR1" and int.from_bytes(tail[:4], "little") > MAX_FOOTER_BYTES:
        length = int.from_bytes(tail[:4], "little")
        raise MetadataFileError(
            f"refused: a {length / 2**20:,.1f} MB footer, over the {MAX_FOOTER_BYTES // 2**20} MB cap"
        )


# Rows decoded at a time. Text columns stay dictionaries (each distinct value once), so a batch
# of rows that repeat one huge value costs that value once; other columns are fixed-size or
# nested, and a batch past a cap costs little memory.
_BATCH_ROWS = 4096


def _check_caps(rows: int, inflated_bytes: int, limits: MetadataLimits, how: str) -> None:
    if rows > limits.max_rows:
        raise MetadataFileError(
            f"refused: {how} {rows:,} rows, over the {limits.max_rows:,}-row cap (max_metadata_rows)"
        )
    if inflated_bytes > limits.max_inflated_bytes:
        raise MetadataFileError(
            f"refused: {how} {inflated_bytes / 2**20:,.1f} MB of column data, over the "
            f"{limits.max_inflated_bytes / 2**20:,.0f} MB cap (max_metadata_inflated_mb)"
        )


def _meta_id_text(value: Any) -> str | None:
    """meta_id as the text to compare with a file stem; None when missing or blank.
    Integer ids (also ones stored as float by pandas, 123.0) become "123"."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value) if value.is_integer() else value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text or None


def to_json_safe(value: Any) -> Any:
    """`value` as something json.dumps (and PostgreSQL JSONB) accepts, recursively.

    Converted, never dropped: datetime -> ISO 8601 (timezone kept, naive stays naive),
    date/time -> ISO, timedelta -> seconds (float), Decimal -> exact string, bytes -> base64,
    NaN/inf -> None, numpy scalars -> Python, mappings -> dict with str keys, sequences -> list.
    A NUL character, which JSONB cannot store, is kept as the six characters `\\u0000`.
    """
    if isinstance(value, str):
        return _storable_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):  # also numpy.float64, a float subclass
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):  # pandas Timestamp is a datetime
        return None if _is_missing(value) else value.isoformat()
    if isinstance(value, dt.timedelta):
        return None if _is_missing(value) else value.total_seconds()
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {_json_key(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json_safe(item) for item in value]
    return _numpy_or_text(value)


def _numpy_or_text(value: Any) -> Any:
    if isinstance(value, np.datetime64):  # .tolist() would give nanoseconds as an int
        return None if np.isnat(value) else str(np.datetime_as_string(value))
    if isinstance(value, np.timedelta64):
        return None if np.isnat(value) else float(value / np.timedelta64(1, "s"))
    if isinstance(value, np.generic | np.ndarray):
        return to_json_safe(value.tolist())
    if _is_missing(value):
        return None
    return str(value)  # an unknown type: keep its text rather than lose it


def _is_missing(value: Any) -> bool:
    """pandas NaT (an instance of datetime and timedelta) and NA: values that are absent."""
    return type(value).__name__ in ("NaTType", "NAType")


def _json_key(key: Any) -> str:
    safe = to_json_safe(key)
    return safe if isinstance(safe, str) else _storable_text(str(safe))


def _storable_text(text: str) -> str:
    """PostgreSQL text and JSONB cannot hold U+0000; one such value must not cost the
    archive its metadata, so it is stored escaped."""
    return text.replace("\x00", "\\u0000") if "\x00" in text else text


def join_metadata(mp3_names: Iterable[str], tables: Sequence[tuple[str, MetadataTable]]) -> MetadataJoin:
    """Match rows to MP3 members by meta_id == file stem (`PurePosixPath(name).stem`).

    Duplicates: parquet members are read in sorted name order and rows in file order; the
    FIRST row for a meta_id wins, every later one is reported in `duplicate_meta_ids` (which
    row was kept, which ignored) and not stored.
    Ambiguous stems: when two MP3s share a stem ("a/x.mp3", "b/x.mp3") no row can say which
    it describes, so neither is matched; the stem is reported in `ambiguous_stems`.
    Rows no MP3 has a stem for are counted (`rows_without_mp3_count`) and the first ones named;
    tables read with `wanted` (the MP3s' stems) did not keep them, so their duplicates are not
    reported: only rows that could be stored compete.
    Every MP3 ends up either in `matched` or in `mp3s_without_row`.
    """
    names_by_stem: dict[str, list[str]] = {}
    for name in dict.fromkeys(mp3_names):
        names_by_stem.setdefault(PurePosixPath(name).stem, []).append(name)
    first_rows, duplicates = _first_rows(tables)
    join = MetadataJoin(
        duplicate_meta_ids=duplicates,
        ambiguous_stems=sorted(stem for stem, names in names_by_stem.items() if len(names) > 1),
    )
    for source_member, row in first_rows:
        names = names_by_stem.get(row.meta_id)
        if names is None:
            join.rows_without_mp3.append((source_member, row.meta_id))
        elif len(names) == 1:
            join.matched[names[0]] = MatchedMetadata(source_member, row.meta_id, row.values)
    for source_member, table in sorted(tables, key=lambda pair: pair[0]):  # read, counted, not kept
        join.rows_without_mp3 += [(source_member, meta_id) for meta_id in table.not_wanted_examples]
    join.rows_without_mp3_count = len(join.rows_without_mp3) + sum(
        t.rows_not_wanted - len(t.not_wanted_examples) for _, t in tables
    )
    join.mp3s_without_row = sorted(
        name for names in names_by_stem.values() for name in names if name not in join.matched
    )
    return join


def _first_rows(
    tables: Sequence[tuple[str, MetadataTable]],
) -> tuple[list[tuple[str, MetadataRow]], list[DuplicateMetaId]]:
    """([(source_member, row)] for each meta_id's first row, the later rows that repeat one)."""
    winners: dict[str, tuple[str, int]] = {}
    first_rows, duplicates = [], []
    for source_member, table in sorted(tables, key=lambda pair: pair[0]):
        for row in table.rows:
            if row.meta_id in winners:
                duplicates.append(DuplicateMetaId(row.meta_id, *winners[row.meta_id], source_member, row.row_index))
            else:
                winners[row.meta_id] = (source_member, row.row_index)
                first_rows.append((source_member, row))
    return first_rows, duplicates


def duplicate_reports(duplicates: Sequence[DuplicateMetaId], shown: int = 5) -> dict[str, str]:
    """{parquet member: one line saying which of its rows were ignored and which rows were
    kept instead}, for the dead letter: one entry per member, a bounded text however many."""
    by_member: dict[str, list[DuplicateMetaId]] = {}
    for duplicate in duplicates:
        by_member.setdefault(duplicate.ignored_member, []).append(duplicate)
    reports = {}
    for member, found in by_member.items():
        examples = "; ".join(
            f"meta_id {d.meta_id!r} row {d.ignored_row} ignored, row {d.kept_row} of {d.kept_member} kept"
            for d in found[:shown]
        )
        more = f"; and {len(found) - shown} more" if len(found) > shown else ""
        reports[member] = (
            f"warning: {len(found)} row(s) repeat a meta_id an earlier row has; the first row wins "
            f"(parquet members in name order, rows in file order): {examples}{more}"
        )
    return reports
