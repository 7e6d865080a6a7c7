"""Migrations, views and the ra_reader role on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg2
from db_privileges import assert_each_refused

from archive_identity import ArchiveVersion
from resources.results_db import ResultsDatabase
from resources.results_db.classifications import ClassificationRow, record_scores
from resources.results_db.opus_files import ConvertedFile, record_conversions
from resources.results_db.raw_archive import register_members
from resources.results_db.transcripts import TranscriptRow, record_transcripts
from sql.migrate import bundled_migrations
from testing.pipeline_support import hold, rows

ARCHIVE = ArchiveVersion("archives/a.tar", "e1", 100, datetime.now(UTC), "a")


def test_migrate_is_idempotent_and_records_versions(postgres_dsn):
    db = ResultsDatabase(dsn=postgres_dsn)
    first = db.migrate()
    assert first == [m.version for m in bundled_migrations()]
    assert first[:4] == ["001", "002", "003", "004"]
    assert db.migrate() == []
    assert db.pending_migrations() == []
    versions = [r["version"] for r in rows(db, "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == first


def register(db: ResultsDatabase, names: list[str]) -> dict[str, int]:
    return register_members(
        hold(db, ARCHIVE, "r"), accepted={n: (10, f"sha-{n}") for n in names}, rejected={}, other_failures=[]
    ).ids


def test_audio_files_unique_per_archive_member(results_db):
    first = register(results_db, ["x.mp3", "y.mp3"])
    again = register(results_db, ["x.mp3", "y.mp3"])
    assert first == again
    assert rows(results_db, "SELECT count(*) AS n FROM audio_files")[0]["n"] == 2


def _seed_flagged_item(results_db: ResultsDatabase) -> int:
    held = hold(results_db, ARCHIVE, "r")
    file_id = register_members(held, accepted={"clip.mp3": (10, "sha-clip.mp3")}, rejected={}, other_failures=[]).ids[
        "clip.mp3"
    ]
    record_conversions(
        held,
        [ConvertedFile(file_id, "processed/2026-11-25/1.opus", "s3://b/processed/2026-11-25/1.opus", "e", 2.5, 900)],
        [],
    )
    record_transcripts(held, [TranscriptRow(file_id, "whisper-base", "you are an idiot", "en", 0.9, [])], [])
    record_scores(
        held,
        [
            ClassificationRow(file_id, "harassment", "cope-a", 0.93, 0.5, False, None, "pv1"),
            ClassificationRow(file_id, "hate_speech", "cope-a", 0.1, 0.5, False, None, "pv2"),
        ],
        [file_id],
        [],
    )
    return file_id


def test_ra_queue_shows_flagged_items_with_transcript_and_metadata(results_db):
    file_id = _seed_flagged_item(results_db)
    queue = rows(results_db, "SELECT * FROM ra_queue")
    assert len(queue) == 1
    row = queue[0]
    assert row["audio_file_id"] == file_id
    assert row["flag_category"] == "harassment" and row["policy_version"] == "pv1"
    assert row["transcript_text"] == "you are an idiot"
    assert row["opus_key"] == "processed/2026-11-25/1.opus"


def test_ra_queue_leaves_out_files_removed_from_their_archive(results_db):
    _seed_flagged_item(results_db)
    newer = ArchiveVersion(ARCHIVE.key, "e2", 100, ARCHIVE.last_modified.replace(year=2027), "a")
    register_members(hold(results_db, newer, "r2"), accepted={"other.mp3": (1, "s")}, rejected={}, other_failures=[])
    assert rows(results_db, "SELECT * FROM ra_queue") == []


def test_daily_stats_breaks_down_by_day_and_status(results_db):
    _seed_flagged_item(results_db)
    register(results_db, ["clip.mp3", "other.mp3"])
    stats = rows(results_db, "SELECT status, files FROM daily_stats ORDER BY status")
    assert {(r["status"], r["files"]) for r in stats} == {("classified", 1), ("pending", 1)}


def test_ra_reader_reads_views_and_nothing_else(results_db, ra_login):
    _seed_flagged_item(results_db)
    with psycopg2.connect(ra_login) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ra_queue")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM daily_stats")
        assert cur.fetchone()[0] >= 1
    assert_each_refused(
        ra_login,
        [
            "SELECT * FROM audio_files",
            "SELECT * FROM transcripts",
            "SELECT * FROM archives",
            "INSERT INTO classifications (audio_file_id, flag_category, model, flagged) VALUES (1, 'x', 'y', true)",
            "UPDATE audio_files SET status = 'failed'",
        ],
    )
