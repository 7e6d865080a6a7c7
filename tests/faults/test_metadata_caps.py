"""Parquet metadata bounded per archive, not per file (issue 23 item 10): the three drills of the
review, sized to run here in seconds with low caps set in the run config, on real services
(SeaweedFS, PostgreSQL, ffmpeg; `parquet_metadata` run in process with the archive's other
ingest steps).

Memory is measured where the step reads: `read_parquet_members` (what the asset calls) run on the
drill's archive in a fresh Python process, its peak RSS over what its imports took.

Each drill measures what the fault table in tests/faults/README.md reports: files lost,
duplicate rows, orphan objects and rows whose object disagrees with them (all 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_report import assert_objects_agree, failures, files, record_outcome

from testing.archive_factory import build_tar, make_tone_mp3, patch_total_byte_size

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MIB = 2**20
CLIPS = ("clips/a.mp3", "clips/b.mp3")


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> list[tuple[str, Path]]:
    parts = tmp_path_factory.mktemp("metadata-tones")
    return [
        (name, make_tone_mp3(parts / Path(name).name, seconds=1, freq=300 + 100 * i)) for i, name in enumerate(CLIPS)
    ]


def caps(**mb) -> dict:
    return {"ops": {"parquet_metadata": {"config": mb}}}


def peak_reading_mb(tar: Path, parquet_names: list[str], config: dict) -> float:
    """Peak RSS (MB) that reading the archive's parquet members adds in a fresh process: its
    resident size sampled every 2 ms while it reads, over the size before (its imports done)."""
    script = (
        "import tempfile, threading, psutil\n"
        "from pathlib import Path\n"
        "from audio_assets.parquet_metadata import read_parquet_members\n"
        "from audio_assets.settings import MetadataConfig\n"
        "process, done, peak = psutil.Process(), threading.Event(), []\n"
        "before = process.memory_info().rss\n"
        "def sample():\n"
        "    while not done.wait(0.002):\n"
        "        peak.append(process.memory_info().rss)\n"
        "sampler = threading.Thread(target=sample)\n"
        "sampler.start()\n"
        "with tempfile.TemporaryDirectory() as folder:\n"
        f"    read_parquet_members(Path({str(tar)!r}), set({parquet_names!r}), {{'a', 'b'}}, Path(folder), "
        f"MetadataConfig(**{config!r}))\n"
        "done.set()\n"
        "sampler.join()\n"
        "print((max(peak + [process.memory_info().rss]) - before) / 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=os.environ)
    return float(out.stdout.split()[-1])


def text_rows(first_ids: list[str], rows: int, text_bytes: int, seed: int) -> pa.Table:
    """`rows` rows: meta_ids (the first ones given, then unmatched ids) and a note of
    `text_bytes` that is different in every row (no dictionary can hold it once) but compresses
    well on disk."""
    ids = first_ids + [f"other-{seed}-{i}" for i in range(rows - len(first_ids))]
    notes = [f"{seed}:{i}:" + "z" * text_bytes for i in range(rows)]
    return pa.table({"meta_id": ids, "note": notes})


def write(table: pa.Table, path: Path, **options) -> Path:
    pq.write_table(table, path, compression="zstd", **options)
    return path


# --- 40 members, each under the per-file caps --------------------------------------------------


def test_forty_parquet_members_under_the_file_caps_are_held_to_the_archive_cap(runner, results_db, tones, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    members = [
        (f"meta/m{i:02d}.parquet", write(text_rows(["a", "b"] if i == 0 else [], 2000, 4000, i), parts / f"{i}.pq"))
        for i in range(40)
    ]
    on_disk = sum(path.stat().st_size for _, path in members)
    tar = build_tar(tmp_path / "batch_forty_parquets.tar", [*tones, *members])
    key = runner.upload(tar)
    config = {"max_metadata_inflated_mb": 16, "max_metadata_archive_mb": 64}
    assert runner.run(key, run_config=caps(**config)).success

    refused = {name: f["error"] for (name, stage), f in failures(results_db, key).items() if stage == "metadata"}
    # 8 MB of text each: the archive's 64 MB are reached in the 8th member; it and the 32 after
    # it are refused (before: all 40 read, every row of every table held at once).
    assert 30 <= len(refused) <= 34, refused
    assert all(error.endswith("over the 64 MB archive cap (max_metadata_archive_mb)") for error in refused.values())
    first_refused = refused[min(refused)]
    assert "meta/m00.parquet" not in refused
    stored = files(results_db, key)
    assert {name: row["parquet_metadata"]["meta_id"] for name, row in stored.items()} == {
        "clips/a.mp3": "a",
        "clips/b.mp3": "b",
    }
    growth = peak_reading_mb(tar, [name for name, _ in members], config)
    assert growth < 100, f"reading the 40 members took {growth:.0f} MB"  # before: 418 MB
    objects = assert_objects_agree(results_db, runner.object_store, key)
    record_outcome(
        f"40 parquet members ({on_disk // 1024} KB on disk), each 8 MB of text decoded, under the per-file cap "
        "(16 MB in the drill), archive cap 64 MB (`max_metadata_archive_mb`; default 512)",
        f'{40 - len(refused)} members read, {len(refused)} refused, the first with "{first_refused}" '
        f"(before: no archive cap, all 40 read and every row of every table held as Python objects at once, "
        f"418 MB of peak RSS reading them); the 2 MP3s "
        f"got their rows from the first member; reading took {growth:.0f} MB of peak RSS over its imports "
        f"(streamed: only rows of the archive's MP3s are kept); files lost 0, duplicate rows 0, orphan objects 0 "
        f"({objects} objects), rows whose object disagrees 0",
    )


# --- a footer that understates, over one huge dictionary-coded value -------------------------------


def test_a_patched_footer_over_one_huge_repeated_value_never_inflates(runner, results_db, tones, tmp_path):
    rows = 4000
    huge = "q" * (100 * 1024)  # 100 KB, the same in every row: one dictionary entry on disk
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array([huge]))
    ids = ["a", "b"] + [f"other-{i}" for i in range(rows - 2)]
    bomb = patch_total_byte_size(write(pa.table({"meta_id": ids, "note": column}), tmp_path / "bomb.parquet"))
    tar = build_tar(tmp_path / "batch_patched_footer.tar", [*tones, ("meta/bomb.parquet", bomb)])
    key = runner.upload(tar)
    config = {"max_metadata_inflated_mb": 64, "max_metadata_row_kb": 128}
    assert runner.run(key, run_config=caps(**config)).success

    # 400 MB if every row's value were decoded; read as a dictionary the value is held once, and
    # only the 2 rows of the archive's MP3s become documents (before: every row became a Python
    # string, 407 MB of peak RSS).
    assert failures(results_db, key) == {}
    stored = files(results_db, key)
    assert {name: len(row["parquet_metadata"]["note"]) for name, row in stored.items()} == dict.fromkeys(
        CLIPS, len(huge)
    )
    growth = peak_reading_mb(tar, ["meta/bomb.parquet"], config)
    assert growth < 64, f"reading the file took {growth:.0f} MB"  # before: 407 MB
    objects = assert_objects_agree(results_db, runner.object_store, key)
    record_outcome(
        f"parquet of {rows:,} rows repeating one 100 KB value (dictionary-coded, {bomb.stat().st_size // 1024} KB on "
        "disk, 400 MB decoded row by row), its row group's `total_byte_size` patched to 1",
        "read with text columns as dictionaries: the value held once, the 2 rows of the archive's MP3s stored, "
        f"nothing refused; reading took {growth:.0f} MB of peak RSS over its imports (before: 407 MB: every row "
        "became a Python string, 4,000 copies of the value, whatever the footer said); files lost 0, "
        f"duplicate rows 0, orphan objects 0 ({objects} objects), rows whose object disagrees 0",
    )


# --- 8 rows of huge strings ------------------------------------------------------------------------


def test_rows_of_huge_strings_are_refused_before_they_are_decoded(runner, results_db, tones, tmp_path):
    big = write(text_rows(["a", "b"], 8, 24 * MIB, 0), tmp_path / "big.parquet")
    tar = build_tar(tmp_path / "batch_huge_strings.tar", [*tones, ("meta/big.parquet", big)])
    key = runner.upload(tar)
    assert runner.run(key).success  # the defaults: 256 MB a file, 64 KB a row

    refused = failures(results_db, key)[("meta/big.parquet", "metadata")]
    # Before: nothing capped one value; 192 MB of documents went to PostgreSQL in one statement.
    assert refused["error"] == (
        "refused: its footer states 24.0 MB of column data a row, over the 64 KB cap on one row (max_metadata_row_kb)"
    )
    assert {row["parquet_metadata"] for row in files(results_db, key).values()} == {None}
    growth = peak_reading_mb(tar, ["meta/big.parquet"], {})
    assert growth < 32, f"refusing the file took {growth:.0f} MB"  # before: 1,004 MB
    objects = assert_objects_agree(results_db, runner.object_store, key)
    record_outcome(
        f"parquet of 8 rows each holding a 24 MB string ({big.stat().st_size // 1024} KB on disk, 192 MB decoded: "
        "under the 256 MB file cap), default caps",
        f'refused from its footer: "{refused["error"]}"; refusing it took {growth:.0f} MB of peak RSS over its '
        "imports (before: no cap on one value, the 8 rows decoded, 1,004 MB of peak RSS, and 192 MB of documents "
        "sent to PostgreSQL in one statement, then shown to RAs); a value that long hidden among short rows is refused when its batch "
        "decodes, before any row becomes Python objects (tests/unit/test_metadata_rows.py); files lost 0, "
        f"duplicate rows 0, orphan objects 0 ({objects} objects), rows whose object disagrees 0",
    )
