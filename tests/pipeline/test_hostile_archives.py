"""Hostile archives through raw_archive -> opus_files -> parquet_metadata on real services:
every bad member is a rejected member with a reason, and the good MP3 beside it is converted."""

from __future__ import annotations

import pytest

from testing.archive_factory import (
    build_tar,
    entry_blocks,
    gnu_long_name_bomb,
    make_parquet,
    make_tone_mp3,
    many_members,
    pax_header_blocks,
    write_raw_tar,
)
from testing.pipeline_support import rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def good_mp3(tmp_path_factory):
    return make_tone_mp3(tmp_path_factory.mktemp("good") / "good.mp3", seconds=1)


def statuses(results_db, key) -> dict[str, tuple[str, str | None]]:
    return {
        r["original_filename"]: (r["status"], r["error"])
        for r in rows(
            results_db, "SELECT original_filename, status, error FROM audio_files WHERE archive_source = %s", (key,)
        )
    }


def open_failures(results_db, key) -> dict[tuple[str, str], str]:
    found = rows(
        results_db,
        "SELECT original_filename, stage, error FROM processing_failures WHERE archive_source = %s AND resolved_at IS NULL",
        (key,),
    )
    return {(r["original_filename"], r["stage"]): r["error"] for r in found}


def test_unholdable_member_names_are_rejected_and_the_good_file_goes_on(archive_runner, results_db, good_mp3, tmp_path):
    long_component = "x" * 300 + ".mp3"
    archive = write_raw_tar(
        tmp_path / "batch_names.tar",
        [
            entry_blocks((f"clips/{long_component}", good_mp3)),
            pax_header_blocks({"path": b"clips/nul\x00byte.mp3"}) + entry_blocks(("placeholder.mp3", good_mp3)),
            entry_blocks((".mp3", good_mp3)),
            entry_blocks(("clips/good.mp3", good_mp3)),
        ],
    )
    key = archive_runner.upload(archive)
    result = archive_runner.run(key)

    assert result.success
    found = statuses(results_db, key)
    assert found["clips/good.mp3"] == ("converted", None)
    assert found[".mp3"] == ("converted", None)  # a member named exactly ".mp3" is an MP3 too
    long_row = next(name for name in found if name.startswith("clips/xxx"))
    assert found[long_row][0] == "failed" and "longer than 255 bytes" in found[long_row][1]
    nul_row = next(name for name in found if "nul" in name)
    assert "\x00" not in nul_row and found[nul_row] == ("failed", "member name contains a NUL byte")
    assert all(e["passed"] for e in [{"passed": c.passed} for c in result.get_asset_check_evaluations()])


def test_a_long_name_header_bomb_costs_one_member_not_the_archive(archive_runner, results_db, good_mp3, tmp_path):
    archive = gnu_long_name_bomb(
        tmp_path / "batch_bomb.tar.gz", 200 * 1024 * 1024, then=[("named.mp3", good_mp3), ("good.mp3", good_mp3)]
    )
    assert archive.stat().st_size < 400_000  # a 200 MiB header, compressed
    key = archive_runner.upload(archive)
    result = archive_runner.run(key)

    assert result.success
    found = statuses(results_db, key)
    assert found["good.mp3"] == ("converted", None)
    [(bombed, (status, error))] = [(n, s) for n, s in found.items() if n != "good.mp3"]
    assert status == "failed" and "header of 209715200 bytes exceeds the 65536-byte limit" in error


def test_a_parquet_value_with_a_nul_is_stored_escaped(archive_runner, results_db, good_mp3, tmp_path):
    parquet = make_parquet(
        tmp_path / "meta.parquet",
        [
            {"meta_id": "good", "caption": "before\x00after"},
        ],
    )
    key = archive_runner.upload(
        build_tar(tmp_path / "batch_nul_meta.tar", [("good.mp3", good_mp3), ("meta.parquet", parquet)])
    )
    result = archive_runner.run(key)

    assert result.success
    [row] = rows(results_db, "SELECT parquet_metadata FROM audio_files WHERE archive_source = %s", (key,))
    assert row["parquet_metadata"]["caption"] == "before\\u0000after"


def test_an_archive_over_the_member_cap_is_refused_with_the_reason(archive_runner, results_db, tmp_path):
    archive = many_members(tmp_path / "batch_many.tar.gz", 100_000)
    assert archive.stat().st_size < 1_000_000
    key = archive_runner.upload(archive)
    result = archive_runner.run(key)

    assert not result.success
    assert rows(results_db, "SELECT count(*) AS n FROM audio_files WHERE archive_source = %s", (key,))[0]["n"] == 0
    [(where, error)] = open_failures(results_db, key).items()
    assert where == ("", "archive") and error.startswith("archive refused: more than 20000 members")


def test_caps_are_run_config(archive_runner, results_db, good_mp3, tmp_path):
    key = archive_runner.upload(build_tar(tmp_path / "batch_capped.tar", [("a.mp3", good_mp3), ("b.mp3", good_mp3)]))
    result = archive_runner.run(key, run_config={"ops": {"raw_archive": {"config": {"max_members": 1}}}})
    assert not result.success
    assert "more than 1 members" in open_failures(results_db, key)[("", "archive")]
