"""Migrations, views and the ra_reader role on a real PostgreSQL."""

from __future__ import annotations

import psycopg2
import pytest

from resources.results_db import ConvertedFile, ResultsDatabase
from sql.migrate import bundled_migrations


def test_migrate_is_idempotent_and_records_versions(postgres_dsn):
    db = ResultsDatabase(dsn=postgres_dsn)
    first = db.migrate()
    assert first == [m.version for m in bundled_migrations()]
    assert first[:4] == ["001", "002", "003", "004"]
    assert db.migrate() == []
    assert db.pending_migrations() == []
    versions = [r["version"] for r in db.query("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == first


def test_audio_files_unique_per_archive_member(results_db):
    common = dict(archive_source="archives/a.tar", partition_key="a", archive_etag="e1")
    first = results_db.register_members(**common, members=[("x.mp3", 10), ("y.mp3", 20)])
    again = results_db.register_members(**common, members=[("x.mp3", 10), ("y.mp3", 20)])
    assert first == again
    assert results_db.query("SELECT count(*) AS n FROM audio_files")[0]["n"] == 2


def _seed_flagged_item(results_db: ResultsDatabase) -> int:
    ids = results_db.register_members(
        archive_source="archives/a.tar", partition_key="a", archive_etag="e1", members=[("clip.mp3", 100)]
    )
    file_id = ids["clip.mp3"]
    results_db.mark_converted([ConvertedFile(file_id, "processed/2026-11-25/1.opus", "s3://b/processed/2026-11-25/1.opus", 2.5, 900)])
    with results_db.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO transcripts (audio_file_id, model, transcript_text, language, confidence) "
            "VALUES (%s, 'whisper-base', 'you are an idiot', 'en', 0.9)",
            (file_id,),
        )
        cur.execute(
            "INSERT INTO classifications (audio_file_id, flag_category, model, flag_score, flagged, threshold) "
            "VALUES (%s, 'harassment', 'cope-a', 0.93, true, 0.5), (%s, 'hate_speech', 'cope-a', 0.1, false, 0.5)",
            (file_id, file_id),
        )
    return file_id


def test_ra_queue_shows_flagged_items_with_transcript_and_metadata(results_db):
    file_id = _seed_flagged_item(results_db)
    rows = results_db.query("SELECT * FROM ra_queue")
    assert len(rows) == 1
    row = rows[0]
    assert row["audio_file_id"] == file_id
    assert row["flag_category"] == "harassment"
    assert row["transcript_text"] == "you are an idiot"
    assert row["opus_key"] == "processed/2026-11-25/1.opus"


def test_daily_stats_breaks_down_by_day_and_status(results_db):
    _seed_flagged_item(results_db)
    results_db.register_members(
        archive_source="archives/a.tar", partition_key="a", archive_etag="e1", members=[("other.mp3", 5)]
    )
    rows = results_db.query("SELECT status, files FROM daily_stats ORDER BY status")
    assert {(r["status"], r["files"]) for r in rows} == {("converted", 1), ("pending", 1)}


def test_ra_reader_reads_views_and_nothing_else(results_db, ra_login):
    _seed_flagged_item(results_db)
    with psycopg2.connect(ra_login) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ra_queue")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM daily_stats")
        assert cur.fetchone()[0] >= 1
    for statement in (
        "SELECT * FROM audio_files",
        "SELECT * FROM transcripts",
        "INSERT INTO classifications (audio_file_id, flag_category, model, flagged) VALUES (1, 'x', 'y', true)",
        "UPDATE audio_files SET status = 'failed'",
    ):
        with psycopg2.connect(ra_login) as conn, conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
