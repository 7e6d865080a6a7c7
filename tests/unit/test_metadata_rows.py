"""Parquet rows read, made JSON-safe, and joined to MP3 members by meta_id."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from media.metadata_rows import (
    ArchiveMetadataBudget,
    DuplicateMetaId,
    MatchedMetadata,
    MetadataFileError,
    MetadataLimits,
    MetadataRow,
    MetadataTable,
    duplicate_reports,
    join_metadata,
    read_metadata_table,
    to_json_safe,
)
from testing.archive_factory import make_parquet, make_tone_mp3, patch_total_byte_size

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
    assert join.duplicate_meta_ids == [
        DuplicateMetaId("x", "a.parquet", 0, "a.parquet", 1),
        DuplicateMetaId("x", "a.parquet", 0, "b.parquet", 0),
    ]


def test_duplicates_are_reported_once_per_member_saying_which_row_won():
    tables = [("b.parquet", table("x", "y")), ("a.parquet", table("x", "x"))]
    reports = duplicate_reports(join_metadata(["x.mp3"], tables).duplicate_meta_ids)
    assert reports == {
        "a.parquet": "warning: 1 row(s) repeat a meta_id an earlier row has; the first row wins (parquet members "
        "in name order, rows in file order): meta_id 'x' row 1 ignored, row 0 of a.parquet kept",
        "b.parquet": "warning: 1 row(s) repeat a meta_id an earlier row has; the first row wins (parquet members "
        "in name order, rows in file order): meta_id 'x' row 0 ignored, row 0 of a.parquet kept",
    }
    many = duplicate_reports([DuplicateMetaId(str(i), "a.parquet", i, "b.parquet", i) for i in range(1000)])
    assert many["b.parquet"].startswith("warning: 1000 row(s)") and many["b.parquet"].endswith("; and 995 more")


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


LIMITS = MetadataLimits(max_rows=100_000, max_inflated_bytes=256 * 2**20)


def write_parquet_bomb(path: Path, rows: int) -> Path:
    """A few KB that decode to `rows` rows: one meta_id repeated, dictionary- and RLE-encoded."""
    indices = pa.array(np.zeros(rows, dtype=np.int32))
    column = pa.DictionaryArray.from_arrays(indices, pa.array(["same-clip-" + "x" * 200]))
    pq.write_table(pa.table({"meta_id": column}), path, compression="zstd", row_group_size=1_000_000)
    return path


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh Python process running `code`."""
    script = f"import resource\n{code}\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def test_parquet_bomb_is_refused_from_its_footer_in_bounded_memory(tmp_path):
    bomb = write_parquet_bomb(tmp_path / "bomb.parquet", 5_000_000)
    assert bomb.stat().st_size < 200 * 1024
    with pytest.raises(
        MetadataFileError, match=r"^refused: its footer states 5,000,000 rows, over the 100,000-row cap"
    ):
        read_metadata_table(bomb, LIMITS)
    setup = "from pathlib import Path\nfrom media.metadata_rows import MetadataLimits, read_metadata_table"
    refuse = (
        f"try:\n    read_metadata_table(Path({str(bomb)!r}), MetadataLimits(100_000, 256 * 2**20))\n"
        "except Exception as exc:\n    assert str(exc).startswith('refused')"
    )
    baseline, reading = peak_rss_mb(setup), peak_rss_mb(f"{setup}\n{refuse}")
    print(
        f"peak RSS importing only {baseline:.0f} MB, refusing a {bomb.stat().st_size // 1024} KB parquet of 5M rows "
        f"{reading:.0f} MB (+{reading - baseline:.1f} MB)"
    )
    assert reading - baseline < 32  # decoded, the rows would take gigabytes


def test_inflated_bytes_and_rows_are_capped_too(tmp_path):
    path = make_parquet(
        tmp_path / "m.parquet", [{"meta_id": str(i), "note": f"{i:05d}" + "y" * 1000} for i in range(3000)]
    )
    one_mb = MetadataLimits(max_rows=100_000, max_inflated_bytes=2**20)
    with pytest.raises(
        MetadataFileError, match=r"^refused: its footer states 2.9 MB of column data, over the 1 MB cap"
    ):
        read_metadata_table(path, one_mb)
    with pytest.raises(MetadataFileError, match=r"^refused: its footer states 3,000 rows, over the 2,999-row cap"):
        read_metadata_table(path, MetadataLimits(max_rows=2999, max_inflated_bytes=2**30))
    assert len(read_metadata_table(path, MetadataLimits(max_rows=3000, max_inflated_bytes=2**30)).rows) == 3000


def test_a_footer_that_understates_the_inflated_size_is_caught_while_decoding(tmp_path):
    # One repeated value is stored once in a dictionary page: the footer's uncompressed size is
    # a few KB, the decoded column is 2.9 MB. Decoding stops at the first batch over the cap.
    path = make_parquet(tmp_path / "m.parquet", [{"meta_id": str(i), "note": "y" * 1000} for i in range(3000)])
    with pytest.raises(MetadataFileError, match=r"^refused: decoding reached .* MB of column data, over the 1 MB cap"):
        read_metadata_table(path, MetadataLimits(max_rows=100_000, max_inflated_bytes=2**20))


def test_a_huge_footer_is_refused_before_it_is_parsed(tmp_path):
    table = pa.table({"meta_id": ["a"]}).replace_schema_metadata({"padding": "x" * (17 * 2**20)})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(MetadataFileError, match=r"^refused: a [0-9.]+ MB footer, over the 16 MB cap$"):
        read_metadata_table(tmp_path / "m.parquet", LIMITS)


# --- bounded per archive (issue 23 item 10) --------------------------------------------------


def test_only_wanted_rows_are_kept_and_the_others_counted(tmp_path):
    path = make_parquet(tmp_path / "m.parquet", [{"meta_id": str(i), "n": i} for i in range(5000)])
    table = read_metadata_table(path, LIMITS, wanted={"7", "4999"})
    assert [(r.meta_id, r.row_index) for r in table.rows] == [("7", 7), ("4999", 4999)]
    assert (table.rows_read, table.rows_not_wanted, len(table.not_wanted_examples)) == (5000, 4998, 20)
    join = join_metadata(["clips/7.mp3", "clips/4999.mp3"], [("m.parquet", table)])
    assert set(join.matched) == {"clips/7.mp3", "clips/4999.mp3"}
    assert join.rows_without_mp3_count == 4998 and len(join.rows_without_mp3) == 20


def test_the_archive_budget_refuses_the_file_that_crosses_it_and_every_one_after(tmp_path):
    rows = [{"meta_id": f"{j}", "note": f"{j}" + "y" * 1000} for j in range(1000)]  # 1.0 MB decoded
    files = [make_parquet(tmp_path / f"{i}.parquet", rows) for i in range(4)]
    budget = ArchiveMetadataBudget(2 * 2**20)
    assert [read_metadata_table(f, LIMITS, wanted=set(), budget=budget).rows_read for f in files[:2]] == [1000, 1000]
    for later in files[2:]:
        with pytest.raises(
            MetadataFileError,
            match=r"^refused: its footer states 1.0 MB of column data, which would take the archive's parquet data "
            r"to [0-9.]+ MB, over the 2 MB archive cap \(max_metadata_archive_mb\)$",
        ):
            read_metadata_table(later, LIMITS, wanted=set(), budget=budget)


def test_a_footer_whose_total_byte_size_is_forged_is_still_read_by_its_column_sizes(tmp_path):
    path = make_parquet(tmp_path / "m.parquet", [{"meta_id": str(i), "note": f"{i}" + "y" * 1000} for i in range(3000)])
    patch_total_byte_size(path, 1)
    with pytest.raises(MetadataFileError, match=r"^refused: its footer states 2.9 MB of column data, over the 1 MB"):
        read_metadata_table(path, MetadataLimits(max_rows=100_000, max_inflated_bytes=2**20))


def test_one_long_value_among_short_rows_is_refused_before_rows_become_python(tmp_path):
    notes = ["short"] * 20_000
    notes[12_345] = "v" * (24 * 2**20)
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"meta_id": [str(i) for i in range(20_000)], "note": notes}), path, compression="zstd")
    limits = MetadataLimits(max_rows=100_000, max_inflated_bytes=256 * 2**20, max_row_bytes=64 * 1024)
    with pytest.raises(MetadataFileError, match=r"^refused: a value of column 'note' is 24.0 MB, over the 64 KB cap"):
        read_metadata_table(path, limits, wanted={"1"})
    # A row over the cap as a whole (many short values) is refused by its JSON size.
    nested = make_parquet(tmp_path / "n.parquet", [{"meta_id": "1", "tags": ["t" * 100] * 1000}])
    with pytest.raises(MetadataFileError, match=r"^refused: row 0 \(meta_id '1'\) is 102 KB as JSON, over the 64 KB"):
        read_metadata_table(nested, limits, wanted={"1"})
