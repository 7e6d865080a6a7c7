"""raw_archive -> opus_files + parquet_metadata on real SeaweedFS, PostgreSQL and ffmpeg."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import re
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from s3_fault_proxy import S3FaultProxy

from definitions import build_definitions
from resources.object_store import ObjectStore
from testing.archive_factory import (
    RegularEntry,
    SymlinkEntry,
    build_tar,
    corrupt_gzip,
    make_parquet,
    make_speech_mp3,
    make_tone_mp3,
    truncate_file,
)
from testing.pipeline_support import ArchiveRunner, pipeline_resources, rows


def rows_by_name(results_db, archive_key):
    found = rows(results_db, "SELECT * FROM audio_files WHERE archive_source = %s", (archive_key,))
    return {r["original_filename"]: r for r in found}


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def open_failures(results_db, archive_key):
    return rows(
        results_db,
        "SELECT original_filename, stage, error FROM processing_failures "
        "WHERE archive_source = %s AND resolved_at IS NULL ORDER BY original_filename, stage",
        (archive_key,),
    )


@pytest.fixture
def good_archive(tmp_path) -> Path:
    metadata_schema = pa.schema(
        [
            ("meta_id", pa.string()),
            ("posted_at", pa.timestamp("us", tz="UTC")),
            ("creator", pa.struct([("handle", pa.string()), ("followers", pa.int64())])),
            ("like_ratio", pa.decimal128(6, 4)),
        ]
    )
    parquet = make_parquet(
        tmp_path / "parts" / "meta.parquet",
        [
            {
                "meta_id": "hello",
                "posted_at": dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC),
                "creator": {"handle": "@a", "followers": 10},
                "like_ratio": decimal.Decimal("0.1234"),
            },
            {
                "meta_id": "tone",
                "posted_at": dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
                "creator": {"handle": "@b", "followers": 20},
                "like_ratio": decimal.Decimal("0.5000"),
            },
            {"meta_id": "no_such_clip", "posted_at": None, "creator": None, "like_ratio": None},
        ],
        schema=metadata_schema,
    )
    return build_tar(
        tmp_path / "batch_good.tar.gz",
        [
            ("clips/hello.mp3", make_speech_mp3(tmp_path / "parts" / "hello.mp3", "hello from the test archive")),
            ("clips/tone.mp3", make_tone_mp3(tmp_path / "parts" / "tone.mp3", seconds=1.5)),
            ("meta.parquet", parquet),
        ],
        gzip=True,
    )


@pytest.mark.integration
def test_good_archive_becomes_converted_rows_with_metadata(archive_runner, results_db, object_store, good_archive):
    key = archive_runner.upload(good_archive)
    result = archive_runner.run(key)

    assert result.success
    assert all(check_results(result).values()), check_results(result)
    rows = rows_by_name(results_db, key)
    assert set(rows) == {"clips/hello.mp3", "clips/tone.mp3"}
    for row in rows.values():
        assert row["status"] == "converted"
        upload_day = dt.datetime.now(dt.UTC).date().isoformat()  # archive LastModified
        # written once, by one step execution: processed/{date}/{id}-{execution}.opus
        assert re.fullmatch(rf"processed/{upload_day}/{row['id']}-\d+\.opus", row["opus_path"]), row["opus_path"]
        assert row["s3_opus_path"] == f"s3://{object_store.bucket}/{row['opus_path']}"
        assert object_store.head(row["opus_path"]).size == row["file_size_bytes"]
        assert row["partition_key"] == "batch_good"
    assert rows["clips/tone.mp3"]["duration_seconds"] == pytest.approx(1.5, abs=0.1)
    hello = rows["clips/hello.mp3"]["parquet_metadata"]
    assert hello["posted_at"].startswith("2026-11-01T12:00:00")
    assert hello["creator"] == {"handle": "@a", "followers": 10}
    assert hello["like_ratio"] == "0.1234"
    assert rows["clips/hello.mp3"]["metadata_source"] == "meta.parquet"
    metadata = result.asset_materializations_for_node("parquet_metadata")[0].metadata
    assert metadata["matched"].value == 2
    assert metadata["rows_without_mp3"].value == 1


@pytest.mark.integration
def test_the_archive_is_read_from_s3_once_per_run(
    s3_server, object_store, results_db, instance, transcriber, classifier, scratch_root, good_archive
):
    """raw_archive, opus_files and parquet_metadata all read the archive's bytes; the run
    downloads it once (GET requests counted by a proxy in front of the real SeaweedFS)."""
    with S3FaultProxy(s3_server.endpoint_url, fault_rate=0.0) as proxy:
        through_proxy = ObjectStore(
            endpoint_url=proxy.endpoint_url,
            bucket=object_store.bucket,
            access_key=object_store.access_key,
            secret_key=object_store.secret_key,
        )
        defs = build_definitions(pipeline_resources(through_proxy, results_db, scratch_root, transcriber, classifier))
        runner = ArchiveRunner(defs, instance, object_store, results_db)
        key = runner.upload(good_archive)
        for run in (1, 2):
            proxy.reset_stats()
            result = runner.run(key, run_config={"ops": {"opus_files": {"config": {"reconvert": True}}}})
            assert result.success
            gets = [path for method, path in proxy.requests_seen() if method == "GET" and path.endswith(key)]
            assert gets == [f"/{object_store.bucket}/{key}"], (run, proxy.requests_seen())
    assert not scratch_root.exists() or not any(scratch_root.rglob("*"))  # the run's copy is gone


@pytest.mark.integration
def test_rematerializing_gives_the_same_rows_and_objects(archive_runner, results_db, object_store, good_archive):
    key = archive_runner.upload(good_archive)
    assert archive_runner.run(key).success
    before = rows_by_name(results_db, key)
    objects_before = sorted(o.key for o in object_store.iter_objects("processed/"))

    # A backfill from the UI carries no sensor tags: the run finds the archive by partition key.
    assert archive_runner.run(key, tags=False).success

    after = rows_by_name(results_db, key)
    assert {n: (r["id"], r["opus_path"], r["status"]) for n, r in after.items()} == {
        n: (r["id"], r["opus_path"], r["status"]) for n, r in before.items()
    }
    assert sorted(o.key for o in object_store.iter_objects("processed/")) == objects_before
    assert len(objects_before) == 2
    assert rows(results_db, "SELECT count(*) AS n FROM audio_files")[0]["n"] == 2


@pytest.mark.integration
def test_bad_files_in_a_good_archive_fail_alone_with_reasons(archive_runner, results_db, tmp_path):
    good = make_tone_mp3(tmp_path / "good.mp3")
    archive = build_tar(
        tmp_path / "batch_mixed.tar",
        [
            ("good.mp3", good),
            ("empty.mp3", b""),
            ("noise.mp3", os.urandom(4096)),
            ("notes.mp3", b"this is a text file, not audio\n" * 20),
            ("../escape.mp3", good),
            ("/abs/path.mp3", good),
            SymlinkEntry("link.mp3", "/etc/passwd"),
            RegularEntry(b"caf\xe9.mp3", good.read_bytes()),
            ("no_meta_id.parquet", make_parquet(tmp_path / "p1.parquet", [{"id": "good"}])),
            ("broken.parquet", b"PAR1 but not really parquet"),
            (
                "dup.parquet",
                make_parquet(
                    tmp_path / "p2.parquet",
                    [
                        {"meta_id": "good", "source": "first"},
                        {"meta_id": "good", "source": "second"},
                    ],
                ),
            ),
            ("good.mp3", b"a second member with the same name"),
        ],
    )
    key = archive_runner.upload(archive)
    result = archive_runner.run(key)

    assert result.success, "broken files must not fail the partition"
    assert check_results(result)["every_mp3_has_one_row"]
    rows = rows_by_name(results_db, key)
    assert len(rows) == 8  # every MP3 member, including the rejected ones
    assert rows["good.mp3"]["status"] == "converted"
    assert rows["good.mp3"]["parquet_metadata"]["source"] == "first"  # first duplicate wins
    expected_failures = {
        "empty.mp3": ("conversion", "empty"),
        "noise.mp3": ("conversion", ""),
        "notes.mp3": ("conversion", ""),
        "../escape.mp3": ("archive", ".."),
        "/abs/path.mp3": ("archive", "absolute"),
        "link.mp3": ("archive", "link"),
        "caf\\xe9.mp3": ("archive", "UTF-8"),
    }
    for name, (stage, words) in expected_failures.items():
        row = rows[name]
        assert row["status"] == "failed", name
        assert row["failed_stage"] == stage, name
        assert words.lower() in row["error"].lower(), (name, row["error"])
    failures = {(f["original_filename"], f["stage"]) for f in open_failures(results_db, key)}
    assert {(n, s) for n, (s, _) in expected_failures.items()} <= failures
    assert ("good.mp3", "archive") in failures  # the duplicate member, not the converted row
    assert ("no_meta_id.parquet", "metadata") in failures
    assert ("broken.parquet", "metadata") in failures
    metadata = result.asset_materializations_for_node("parquet_metadata")[0].metadata
    assert metadata["duplicate_meta_ids"].value == 1
    assert metadata["unreadable_parquet_files"].value == 2


@pytest.mark.integration
@pytest.mark.parametrize(
    "damage, reason",
    [("truncate", "unreadable"), ("corrupt_gzip", "unreadable"), ("no_mp3", "no MP3")],
)
def test_broken_archive_fails_its_run_with_the_reason_recorded(archive_runner, results_db, tmp_path, damage, reason):
    mp3 = make_tone_mp3(tmp_path / "a.mp3", seconds=3)
    if damage == "no_mp3":
        archive = build_tar(tmp_path / "batch_bad.tar.gz", [("readme.txt", b"nothing here")], gzip=True)
    else:
        archive = build_tar(tmp_path / "batch_bad.tar.gz", [("a.mp3", mp3), ("b.mp3", mp3)], gzip=True)
        if damage == "truncate":
            truncate_file(archive, 0.6)
        else:
            corrupt_gzip(archive)
    key = archive_runner.upload(archive)

    result = archive_runner.run(key)

    assert not result.success
    failure = result.failure_data_for_node("raw_archive")
    assert reason.lower() in failure.error.message.lower()
    [recorded] = open_failures(results_db, key)
    assert recorded["original_filename"] == "" and recorded["stage"] == "archive"
    assert reason.lower() in recorded["error"].lower()


@pytest.mark.integration
def test_scratch_is_removed_even_when_a_step_fails(archive_runner, scratch_root, tmp_path):
    archive = build_tar(tmp_path / "batch_bad.tar.gz", [("a.mp3", make_tone_mp3(tmp_path / "a.mp3", 3))], gzip=True)
    truncate_file(archive, 0.5)
    assert not archive_runner.run(archive_runner.upload(archive)).success
    assert not scratch_root.exists() or not any(scratch_root.rglob("*"))
