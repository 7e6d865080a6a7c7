"""Security edges: what RAs' database role can and cannot do, what the UI shows of resource
configuration, and what a launchpad user can point the pipeline at."""

from __future__ import annotations

import json
from datetime import UTC

import dagster as dg
import psycopg2
import pytest
from db_privileges import assert_each_refused

from archive_identity import ArchiveVersion
from definitions import build_definitions
from resources.environments import resources_for
from resources.results_db.classifications import ClassificationRow, record_scores
from resources.results_db.opus_files import ConvertedFile, record_conversions
from resources.results_db.raw_archive import register_members
from resources.results_db.transcripts import TranscriptRow, record_transcripts
from testing.pipeline_support import hold, rows

RA_VIEWS = ["ra_queue", "daily_stats", "daily_report", "open_failures"]


def test_every_view_readers_use_is_a_security_barrier(results_db):
    found = rows(
        results_db,
        "SELECT relname, reloptions FROM pg_class WHERE relkind = 'v' AND relname = ANY(%s)",
        (RA_VIEWS,),
    )
    assert {r["relname"]: r["reloptions"] for r in found} == {name: ["security_barrier=true"] for name in RA_VIEWS}


def _seed_flagged_and_hidden(results_db) -> None:
    from datetime import datetime

    archive = ArchiveVersion("archives/s.tar", "e1", 1, datetime.now(UTC), "s")
    held = hold(results_db, archive, "r")
    ids = register_members(
        held, accepted={"visible.mp3": (1, "a"), "hidden-secret.mp3": (1, "b")}, rejected={}, other_failures=[]
    ).ids
    record_conversions(
        held, [ConvertedFile(i, f"processed/x/{i}.opus", "s3://b/x", "e", 1.0, 10) for i in ids.values()], []
    )
    record_transcripts(held, [TranscriptRow(i, "m", f"text of {name}", "en", 0.9, []) for name, i in ids.items()], [])
    record_scores(
        held,
        [
            ClassificationRow(ids["visible.mp3"], "p", "c", 0.9, 0.5, False, None),
            ClassificationRow(ids["hidden-secret.mp3"], "p", "c", 0.1, 0.5, False, None),
        ],
        list(ids.values()),
        [],
    )


def test_ra_reader_cannot_create_objects_or_temporary_functions(results_db, ra_login):
    assert_each_refused(
        ra_login,
        [
            "CREATE TABLE public.stolen (x text)",
            "CREATE TEMP TABLE stolen (x text)",
            "CREATE FUNCTION pg_temp.leak(text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
            "CREATE FUNCTION public.leak(text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        ],
    )


def test_a_leaky_function_sees_only_what_the_view_shows(results_db, ra_login):
    """The classic attack on views: a cheap function in the reader's WHERE clause that reports
    every value it is called with. An administrator creates it here (RAs cannot, see above);
    against a security_barrier view it sees only the rows the view returns. The same query
    against a plain copy of the view leaks the hidden row, so the check has teeth."""
    _seed_flagged_and_hidden(results_db)
    with results_db.open_connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            "CREATE FUNCTION public.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS "
            "$$ BEGIN RAISE NOTICE 'saw %', $1; RETURN true; END $$"
        )
        cur.execute("SELECT pg_get_viewdef('ra_queue'::regclass)")
        cur.execute(f"CREATE VIEW plain_ra_queue AS {cur.fetchone()[0]}")
        cur.execute("GRANT SELECT ON plain_ra_queue TO ra_reader")

    def seen_through(view: str) -> str:
        with psycopg2.connect(ra_login) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT original_filename FROM {view} WHERE leak(original_filename)")
            visible = [r[0] for r in cur.fetchall()]
            assert visible == ["visible.mp3"]
            return " ".join(conn.notices)

    assert "hidden-secret" not in seen_through("ra_queue")
    assert "hidden-secret" in seen_through("plain_ra_queue")


SECRETS = {"S3_SECRET_KEY": "s3-secret-value-1", "POSTGRES_PASSWORD": "pg-secret-value-2"}


@pytest.mark.parametrize("environment", ["local", "production"])
def test_resource_configuration_the_ui_shows_holds_no_secret(monkeypatch, environment):
    for name, value in {
        "S3_ENDPOINT": "http://127.0.0.1:9",
        "S3_BUCKET": "b",
        "S3_ACCESS_KEY": "ak",
        "POSTGRES_HOST": "db",
        "POSTGRES_PORT": "5432",
        "POSTGRES_DB": "d",
        "POSTGRES_USER": "u",
        "SCRATCH_ROOT": "/tmp/s",
        **SECRETS,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("POSTGRES_DSN", raising=False)
    repository = build_definitions(resources_for(environment)).get_repository_def()
    # What the UI's resource page shows: each resource's configured values.
    shown = {
        name: resource.config_schema.default_value_as_json_str
        for name, resource in repository.get_top_level_resources().items()
        if resource.config_schema.default_provided
    }
    for name, config in shown.items():
        for secret in SECRETS.values():
            assert secret not in config, f"{name} shows a secret in the UI: {config}"
    assert json.loads(shown["object_store"])["secret_key"] == {"env": "S3_SECRET_KEY"}
    assert json.loads(shown["results_db"])["password"] == {"env": "POSTGRES_PASSWORD"}

    monkeypatch.setenv("POSTGRES_DSN", "host=db password=pg-secret-value-2")
    with_dsn = build_definitions(resources_for(environment)).get_repository_def().get_top_level_resources()
    assert "pg-secret-value-2" not in with_dsn["results_db"].config_schema.default_value_as_json_str


def test_ffmpeg_cannot_be_chosen_from_run_config(defs):
    job = defs.resolve_job_def("archive_job")
    with pytest.raises(dg.DagsterInvalidConfigError, match="ffmpeg_path"):
        dg.validate_run_config(job, {"ops": {"opus_files": {"config": {"ffmpeg_path": "/bin/sh"}}}})
