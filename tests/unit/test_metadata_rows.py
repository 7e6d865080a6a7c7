"""Parquet rows read, made JSON-safe, and joined to MP3 members by meta_id."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_factory import make_parquet, make_tone_mp3

from audio_assets.audio.metadata_rows import (
    MatchedMetadata,
    MetadataFileError,
    MetadataRow,
    MetadataTable,
    join_metadata,
    read_metadata_table,
    to_json_safe,
)

PARIS = dt.timezone(dt.timedelta(hours=1))


def test_rows_of_every_awkward_type_become_json(tmp_path):
    schema = pa.schema(
        [
            ("meta_id", pa.string()),
            ("posted_at", pa.timestamp("us", tz="+01:00")),
            ("recorded_at", pa.timestamp("ns")),  # naive, nanoseconds
            ("day", pa.date32()),
            ("at", pa.time64("us")),
            ("length", pa.duration("ms")),
            ("like_ratio", pa.decimal128(12, 4)),
            ("thumbnail", pa.binary()),
            ("creator", pa.struct([("handle", pa.string()), ("followers", pa.int64())])),
            ("hashtags", pa.list_(pa.string())),
            ("counts", pa.map_(pa.int32(), pa.float64())),
            ("score", pa.float64()),
            ("gain", pa.float32()),
        ]
    )
    row = {
        "meta_id": "clip-1",
        "posted_at": dt.datetime(2026, 11, 1, 9, 30, tzinfo=PARIS),
        "recorded_at": pd.Timestamp("2026-11-01 08:00:00.123456789"),
        "day": dt.date(2026, 11, 1),
        "at": dt.time(9, 30, 15, 250000),
        "length": dt.timedelta(seconds=3, milliseconds=500),
        "like_ratio": Decimal("0.1250"),
        "thumbnail": b"\x89PNG\x00\xff",
        "creator": {"handle": "@maya", "followers": 12_345},
        "hashtags": ["running", "morning"],
        "counts": [(1, 2.5), (2, float("nan"))],
        "score": float("nan"),
        "gain": float("inf"),
    }
    path = make_parquet(tmp_path / "m.parquet", [row], schema=schema)
    (only,) = read_metadata_table(path).rows
    assert only.meta_id == "clip-1" and only.row_index == 0
    assert only.values == {
        "meta_id": "clip-1",
        "posted_at": "2026-11-01T09:30:00+01:00",  # timezone kept
        "recorded_at": "2026-11-01T08:00:00.123456789",  # naive stays naive, ns kept
        "day": "2026-11-01",
        "at": "09:30:15.250000",
        "length": 3.5,
        "like_ratio": "0.1250",  # exact, trailing zero included
        "thumbnail": "iVBORwD/",  # base64
        "creator": {"handle": "@maya", "followers": 12345},
        "hashtags": ["running", "morning"],
        "counts": {"1": 2.5, "2": None},
        "score": None,
        "gain": None,
    }
    json.dumps(only.values, allow_nan=False)  # strictly valid JSON


def test_meta_ids_are_text_and_rows_without_one_are_counted(tmp_path):
    rows = [{"meta_id": 123, "v": 1}, {"meta_id": None, "v": 2}, {"meta_id": 7, "v": 3}]
    ints = make_parquet(tmp_path / "ints.parquet", rows)
    table = read_metadata_table(ints)
    assert [(r.meta_id, r.row_index, r.values["meta_id"]) for r in table.rows] == [("123", 0, 123), ("7", 2, 7)]
    assert table.rows_without_meta_id == 1

    texts = make_parquet(tmp_path / "texts.parquet", [{"meta_id": "  a1 "}, {"meta_id": ""}, {"meta_id": "   "}])
    table = read_metadata_table(texts)
    assert [r.meta_id for r in table.rows] == ["a1"]
    assert table.rows_without_meta_id == 2


def test_integer_ids_stored_as_float_by_pandas_match_their_stem(tmp_path):
    path = tmp_path / "pandas.parquet"
    pd.DataFrame({"meta_id": [1001, None, 1003]}).to_parquet(path)  # float64 with NaN
    table = read_metadata_table(path)
    assert [r.meta_id for r in table.rows] == ["1001", "1003"]
    assert table.rows_without_meta_id == 1


def test_parquet_without_meta_id_column_is_rejected(tmp_path):
    path = make_parquet(tmp_path / "m.parquet", [{"id": "a", "creator": "b"}])
    with pytest.raises(MetadataFileError, match=r"no 'meta_id' column \(columns: id, creator\)"):
        read_metadata_table(path)


@pytest.mark.parametrize(
    "content", [b"", b"meta_id,creator\na,b\n", b"PAR1 not really"], ids=["empty", "csv", "fake-magic"]
)
def test_file_that_is_not_parquet_is_rejected(tmp_path, content):
    path = tmp_path / "m.parquet"
    path.write_bytes(content)
    with pytest.raises(MetadataFileError, match="not a parquet file"):
        read_metadata_table(path)


def test_an_mp3_named_parquet_is_rejected(tmp_path):
    path = make_tone_mp3(tmp_path / "x.mp3", seconds=0.2).rename(tmp_path / "x.parquet")
    with pytest.raises(MetadataFileError, match="not a parquet file"):
        read_metadata_table(path)


def test_large_file_is_read_in_batches_with_continuous_row_index(tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"meta_id": [f"id{i}" for i in range(5000)]}), path, row_group_size=700)
    rows = read_metadata_table(path).rows
    assert [r.row_index for r in rows] == list(range(5000))
    assert rows[4321].meta_id == "id4321"


# --- to_json_safe on values that do not come from pyarrow ----------------------------------


def test_to_json_safe_converts_numpy_and_pandas_values():
    value = {
        "i": np.int64(3),
        "f": np.float32(0.5),
        "nan": np.float64("nan"),
        "b": np.bool_(True),
        "arr": np.array([1, 2]),
        "when": np.datetime64("2026-11-01T08:00:00.000000001"),
        "took": np.timedelta64(1500, "ms"),
        "nat": pd.NaT,
        "na": pd.NA,
        "aware": pd.Timestamp("2026-11-01 08:00", tz="UTC"),
        (1, 2): "tuple key",
        5: {"x": [Decimal("NaN"), Decimal("1E+2"), -math.inf]},
        "set": {"only"},
        "raw": bytearray(b"\x00"),
    }
    safe = to_json_safe(value)
    assert safe == {
        "i": 3,
        "f": 0.5,
        "nan": None,
        "b": True,
        "arr": [1, 2],
        "when": "2026-11-01T08:00:00.000000001",
        "took": 1.5,
        "nat": None,
        "na": None,
        "aware": "2026-11-01T08:00:00+00:00",
        "[1, 2]": "tuple key",
        "5": {"x": [None, "1E+2", None]},
        "set": ["only"],
        "raw": "AA==",
    }
    assert type(safe["i"]) is int and type(safe["f"]) is float and type(safe["when"]) is str
    json.dumps(safe, allow_nan=False)


def test_unknown_objects_are_kept_as_text():
    assert to_json_safe(Path("a/b")) == "a/b"


# --- join ------------------------------------------------------------------------------------


def table(*meta_ids: str) -> MetadataTable:
    return MetadataTable(
        rows=tuple(MetadataRow(m, {"meta_id": m, "n": i}, i) for i, m in enumerate(meta_ids)), rows_without_meta_id=0
    )


def test_rows_join_to_mp3s_by_stem_in_any_folder():
    join = join_metadata(["clips/a.mp3", "b.MP3", "c.mp3"], [("meta.parquet", table("a", "b", "zz"))])
    assert join.matched == {
        "clips/a.mp3": MatchedMetadata("meta.parquet", "a", {"meta_id": "a", "n": 0}),
        "b.MP3": MatchedMetadata("meta.parquet", "b", {"meta_id": "b", "n": 1}),
    }
    assert join.rows_without_mp3 == [("meta.parquet", "zz")]
    assert join.mp3s_without_row == ["c.mp3"]
    assert join.duplicate_meta_ids == [] and join.ambiguous_stems == []


def test_first_row_wins_in_sorted_member_then_file_order():
    # Given out of order on purpose: "a.parquet" is read before "b.parquet".
    tables = [("b.parquet", table("x", "y")), ("a.parquet", table("x", "x"))]
    join = join_metadata(["x.mp3", "y.mp3"], tables)
    assert join.matched["x.mp3"] == MatchedMetadata("a.parquet", "x", {"meta_id": "x", "n": 0})
    assert join.matched["y.mp3"].source_member == "b.parquet"
    assert join.duplicate_meta_ids == [("x", "a.parquet", "a.parquet"), ("x", "a.parquet", "b.parquet")]


def test_ambiguous_stems_match_neither_file():
    join = join_metadata(["day1/clip.mp3", "day2/clip.mp3", "other.mp3"], [("m.parquet", table("clip", "other"))])
    assert join.ambiguous_stems == ["clip"]
    assert list(join.matched) == ["other.mp3"]
    assert join.mp3s_without_row == ["day1/clip.mp3", "day2/clip.mp3"]
    assert join.rows_without_mp3 == []  # the row has MP3s; it just cannot choose one


def test_join_with_no_tables_leaves_every_mp3_without_row():
    join = join_metadata(["b.mp3", "a.mp3", "a.mp3"], [])
    assert join.matched == {} and join.mp3s_without_row == ["a.mp3", "b.mp3"]


def test_read_then_join_end_to_end(tmp_path):
    path = make_parquet(tmp_path / "m.parquet", [{"meta_id": 42, "creator": {"handle": "@x"}}])
    join = join_metadata(["clips/42.mp3"], [("m.parquet", read_metadata_table(path))])
    assert join.matched["clips/42.mp3"].values == {"meta_id": 42, "creator": {"handle": "@x"}}
