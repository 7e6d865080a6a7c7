"""PostgreSQL that holds the results RAs read: audio_files, transcripts, classifications,
processing_failures and the views over them.

Every writer upserts on the natural keys from sql/migrations, so re-running a partition
rewrites rows instead of duplicating them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg2
import psycopg2.extras
from psycopg2.extensions import make_dsn
from pydantic import Field

from sql.migrate import apply_migrations, pending_migrations


@dataclass(frozen=True)
class FileFailure:
    audio_file_id: int | None  # None for a rejected member that has no audio_files row
    original_filename: str
    stage: str
    error: str


@dataclass(frozen=True)
class ConvertedFile:
    audio_file_id: int
    opus_key: str
    s3_uri: str
    duration_seconds: float
    file_size_bytes: int


@dataclass(frozen=True)
class MetadataAssignment:
    original_filename: str
    metadata_source: str
    values: dict[str, Any]


class ResultsDatabase(dg.ConfigurableResource):
    """The results database; `dsn` wins over the separate connection fields."""

    dsn: str | None = Field(default=None, description="libpq DSN or postgresql:// URL")
    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str = "audio_pipeline"
    user: str = "pipeline"
    password: str | None = None
    connect_timeout_s: int = 10

    def connection_string(self) -> str:
        if self.dsn:
            return self.dsn
        return make_dsn(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password,
            connect_timeout=self.connect_timeout_s,
        )

    @contextlib.contextmanager
    def connect(self) -> Iterator[psycopg2.extensions.connection]:
        """A connection whose transaction commits on success and rolls back on error."""
        conn = psycopg2.connect(self.connection_string())
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def migrate(self) -> list[str]:
        return apply_migrations(self.connection_string())

    def pending_migrations(self) -> list[str]:
        return pending_migrations(self.connection_string())

    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()]

    # --- audio_files -------------------------------------------------------------------------

    def register_members(
        self,
        *,
        archive_source: str,
        partition_key: str,
        archive_etag: str,
        members: Iterable[tuple[str, int]],
    ) -> dict[str, int]:
        """Upsert one row per accepted MP3 member; returns {member name: audio_file_id}.

        A row that failed only because the archive itself was unreadable or the member was
        rejected goes back to 'pending'; rows further along keep their status until the stage
        that owns it rewrites them.
        """
        rows = [(archive_source, partition_key, archive_etag, name, size) for name, size in members]
        if not rows:
            return {}
        with self.connect() as conn, conn.cursor() as cur:
            result = psycopg2.extras.execute_values(
                cur,
                """
                INSERT INTO audio_files
                    (archive_source, partition_key, archive_etag, original_filename, source_size_bytes)
                VALUES %s
                ON CONFLICT (archive_source, original_filename) DO UPDATE SET
                    partition_key = EXCLUDED.partition_key,
                    archive_etag = EXCLUDED.archive_etag,
                    source_size_bytes = EXCLUDED.source_size_bytes,
                    status = CASE WHEN audio_files.failed_stage = 'archive'
                                  THEN 'pending' ELSE audio_files.status END,
                    error = CASE WHEN audio_files.failed_stage = 'archive'
                                 THEN NULL ELSE audio_files.error END,
                    failed_stage = CASE WHEN audio_files.failed_stage = 'archive'
                                        THEN NULL ELSE audio_files.failed_stage END
                RETURNING original_filename, id
                """,
                rows,
                fetch=True,
            )
        return dict(result)

    def register_rejected_members(
        self,
        *,
        archive_source: str,
        partition_key: str,
        archive_etag: str,
        rejected: Iterable[tuple[str, str]],
        run_id: str | None,
    ) -> dict[str, int]:
        """Rows for MP3 members the archive scan refused (unsafe path, link, too large...)."""
        ids = {}
        # One connection and transaction for the archive's rejects, not one per member.
        with self.connect() as conn, conn.cursor() as cur:
            for name, reason in rejected:
                cur.execute(
                    """
                    INSERT INTO audio_files (archive_source, partition_key, archive_etag,
                        original_filename, status, error, failed_stage, processed_at)
                    VALUES (%s, %s, %s, %s, 'failed', %s, 'archive', now())
                    ON CONFLICT (archive_source, original_filename) DO UPDATE SET
                        partition_key = EXCLUDED.partition_key,
                        archive_etag = EXCLUDED.archive_etag,
                        status = 'failed', error = EXCLUDED.error,
                        failed_stage = 'archive', processed_at = now(),
                        opus_path = NULL, s3_opus_path = NULL
                    RETURNING id
                    """,
                    (archive_source, partition_key, archive_etag, name, reason),
                )
                ids[name] = cur.fetchone()[0]
        self.record_file_failures(
            archive_source=archive_source,
            partition_key=partition_key,
            failures=[FileFailure(ids[name], name, "archive", reason) for name, reason in rejected],
            run_id=run_id,
            update_rows=False,
        )
        return ids

    def mark_converted(self, files: Sequence[ConvertedFile]) -> None:
        if not files:
            return
        with self.connect() as conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                """
                UPDATE audio_files AS a SET
                    status = 'converted', opus_path = v.opus_key, s3_opus_path = v.s3_uri,
                    duration_seconds = v.duration, file_size_bytes = v.size,
                    error = NULL, failed_stage = NULL, processed_at = now()
                FROM (VALUES %s) AS v (id, opus_key, s3_uri, duration, size)
                WHERE a.id = v.id
                """,
                [
                    (f.audio_file_id, f.opus_key, f.s3_uri, f.duration_seconds, f.file_size_bytes)
                    for f in files
                ],
                template="(%s::bigint, %s, %s, %s::double precision, %s::bigint)",
            )
            cur.execute(
                """
                UPDATE processing_failures SET resolved_at = now()
                WHERE resolved_at IS NULL AND audio_file_id = ANY(%s)
                  AND stage IN ('archive', 'conversion', 'upload')
                """,
                ([f.audio_file_id for f in files],),
            )

    def record_file_failures(
        self,
        *,
        archive_source: str,
        partition_key: str,
        failures: Sequence[FileFailure],
        run_id: str | None,
        update_rows: bool = True,
    ) -> None:
        """Mark files failed (with stage and reason) and keep one open dead-letter row each."""
        if not failures:
            return
        with self.connect() as conn, conn.cursor() as cur:
            if update_rows:
                psycopg2.extras.execute_values(
                    cur,
                    """
                    UPDATE audio_files AS a SET
                        status = 'failed', error = v.error, failed_stage = v.stage, processed_at = now(),
                        -- a file that failed before upload has no Opus object any more;
                        -- one that failed later (transcription...) keeps it for a retry
                        opus_path = CASE WHEN v.stage IN ('archive', 'conversion', 'upload') THEN NULL ELSE a.opus_path END,
                        s3_opus_path = CASE WHEN v.stage IN ('archive', 'conversion', 'upload') THEN NULL ELSE a.s3_opus_path END,
                        duration_seconds = CASE WHEN v.stage IN ('archive', 'conversion', 'upload') THEN NULL ELSE a.duration_seconds END,
                        file_size_bytes = CASE WHEN v.stage IN ('archive', 'conversion', 'upload') THEN NULL ELSE a.file_size_bytes END
                    FROM (VALUES %s) AS v (id, stage, error)
                    WHERE a.id = v.id
                    """,
                    [(f.audio_file_id, f.stage, f.error) for f in failures],
                    template="(%s::bigint, %s, %s)",
                )
            psycopg2.extras.execute_values(
                cur,
                """
                INSERT INTO processing_failures
                    (archive_source, partition_key, original_filename, audio_file_id, stage, error, run_id)
                VALUES %s
                ON CONFLICT (archive_source, original_filename, stage) WHERE resolved_at IS NULL
                DO UPDATE SET error = EXCLUDED.error, run_id = EXCLUDED.run_id,
                              audio_file_id = EXCLUDED.audio_file_id,
                              attempts = processing_failures.attempts + 1, failed_at = now()
                """,
                [
                    (archive_source, partition_key, f.original_filename, f.audio_file_id, f.stage, f.error, run_id)
                    for f in failures
                ],
            )

    def record_archive_failure(
        self, *, archive_source: str, partition_key: str, stage: str, error: str, run_id: str | None
    ) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO processing_failures
                    (archive_source, partition_key, original_filename, stage, error, run_id)
                VALUES (%s, %s, '', %s, %s, %s)
                ON CONFLICT (archive_source, original_filename, stage) WHERE resolved_at IS NULL
                DO UPDATE SET error = EXCLUDED.error, run_id = EXCLUDED.run_id,
                              attempts = processing_failures.attempts + 1, failed_at = now()
                """,
                (archive_source, partition_key, stage, error, run_id),
            )

    def resolve_archive_failures(self, *, archive_source: str, stages: Sequence[str]) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                """
                UPDATE processing_failures SET resolved_at = now()
                WHERE resolved_at IS NULL AND archive_source = %s
                  AND original_filename = '' AND stage = ANY(%s)
                """,
                (archive_source, list(stages)),
            )

    def store_metadata(
        self, *, archive_source: str, assignments: Sequence[MetadataAssignment]
    ) -> int:
        """Attach parquet rows to their files; files without a row get NULL so that a re-run
        after a parquet change does not keep stale metadata. Returns rows updated."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE audio_files SET parquet_metadata = NULL, metadata_source = NULL "
                "WHERE archive_source = %s",
                (archive_source,),
            )
            if not assignments:
                return 0
            psycopg2.extras.execute_values(
                cur,
                """
                UPDATE audio_files AS a SET parquet_metadata = v.doc, metadata_source = v.source
                FROM (VALUES %s) AS v (archive_source, name, source, doc)
                WHERE a.archive_source = v.archive_source AND a.original_filename = v.name
                """,
                [
                    (archive_source, m.original_filename, m.metadata_source, psycopg2.extras.Json(m.values))
                    for m in assignments
                ],
                template="(%s, %s, %s, %s::jsonb)",
                page_size=len(assignments),  # one statement, so rowcount covers all rows
            )
            updated = cur.rowcount
            return updated

    def files_of_archive(self, archive_source: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM audio_files WHERE archive_source = %s ORDER BY original_filename",
            (archive_source,),
        )

    # --- transcripts and classifications -----------------------------------------------------

    def store_transcripts(self, transcripts: Sequence["TranscriptRow"]) -> None:
        """Upsert one transcript per (file, model) and move the files to 'transcribed'."""
        if not transcripts:
            return
        with self.connect() as conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                """
                INSERT INTO transcripts (audio_file_id, model, transcript_text, language, confidence, segments)
                VALUES %s
                ON CONFLICT (audio_file_id, model) DO UPDATE SET
                    transcript_text = EXCLUDED.transcript_text, language = EXCLUDED.language,
                    confidence = EXCLUDED.confidence, segments = EXCLUDED.segments, created_at = now()
                """,
                [
                    (t.audio_file_id, t.model, t.text, t.language, t.confidence, psycopg2.extras.Json(t.segments))
                    for t in transcripts
                ],
            )
            self._advance_status(cur, [t.audio_file_id for t in transcripts], "transcribed", "transcription")

    def store_classifications(self, rows: Sequence["ClassificationRow"], classified_ids: Sequence[int]) -> None:
        """Upsert one row per (file, category, model); files scored on every policy become
        'classified'."""
        with self.connect() as conn, conn.cursor() as cur:
            if rows:
                psycopg2.extras.execute_values(
                    cur,
                    """
                    INSERT INTO classifications (audio_file_id, flag_category, model, flag_score, flagged,
                                                 threshold, content_truncated, reason)
                    VALUES %s
                    ON CONFLICT (audio_file_id, flag_category, model) DO UPDATE SET
                        flag_score = EXCLUDED.flag_score, flagged = EXCLUDED.flagged,
                        threshold = EXCLUDED.threshold, content_truncated = EXCLUDED.content_truncated,
                        reason = EXCLUDED.reason, created_at = now()
                    """,
                    [
                        (r.audio_file_id, r.flag_category, r.model, r.flag_score, r.flagged, r.threshold,
                         r.content_truncated, r.reason)
                        for r in rows
                    ],
                )
            self._advance_status(cur, list(classified_ids), "classified", "classification")

    @staticmethod
    def _advance_status(cur, file_ids: list[int], status: str, stage: str) -> None:
        if not file_ids:
            return
        cur.execute(
            """
            UPDATE audio_files SET status = %s, error = NULL, failed_stage = NULL, processed_at = now()
            WHERE id = ANY(%s)
            """,
            (status, file_ids),
        )
        cur.execute(
            "UPDATE processing_failures SET resolved_at = now() "
            "WHERE resolved_at IS NULL AND audio_file_id = ANY(%s) AND stage = %s",
            (file_ids, stage),
        )


@dataclass(frozen=True)
class TranscriptRow:
    audio_file_id: int
    model: str
    text: str
    language: str | None
    confidence: float | None
    segments: list[dict[str, Any]]


@dataclass(frozen=True)
class ClassificationRow:
    audio_file_id: int
    flag_category: str
    model: str
    flag_score: float | None
    flagged: bool
    threshold: float
    content_truncated: bool
    reason: str | None

