-- Read models for people: the daily report, `audio-pipeline status`, the demo's summary.

-- name: day_file_counts
SELECT count(DISTINCT archive_source) AS archives_processed,
       count(*) FILTER (WHERE status NOT IN ('failed', 'removed')) AS files_processed,
       count(*) FILTER (WHERE status = 'failed') AS files_failed,
       coalesce(sum(duration_seconds) FILTER (WHERE status <> 'removed'), 0) / 3600.0 AS audio_hours,
       extract(epoch FROM max(processed_at) - min(processed_at)) / 3600.0 AS span_hours
FROM audio_files
WHERE processed_at >= %(day)s::date AND processed_at < %(day)s::date + 1

-- name: day_failed_by_stage
SELECT failed_stage AS stage, count(*) AS files
FROM audio_files
WHERE status = 'failed' AND processed_at >= %(day)s::date AND processed_at < %(day)s::date + 1
GROUP BY 1
ORDER BY 1

-- name: day_top_errors
SELECT stage, left(error, 200) AS error, count(*) AS files
FROM processing_failures
WHERE failed_at >= %(day)s::date AND failed_at < %(day)s::date + 1
GROUP BY 1, 2
ORDER BY files DESC, stage
LIMIT 10

-- name: day_flagged_by_category
SELECT c.flag_category, count(DISTINCT c.audio_file_id) AS files
FROM classifications AS c
JOIN audio_files AS a ON a.id = c.audio_file_id
WHERE c.flagged AND a.status <> 'removed'
  AND c.created_at >= %(day)s::date AND c.created_at < %(day)s::date + 1
GROUP BY 1
ORDER BY 1

-- name: day_mean_confidence
SELECT avg(confidence) AS mean
FROM transcripts
WHERE created_at >= %(day)s::date AND created_at < %(day)s::date + 1

-- name: day_review_precision
-- The review console's figures (sql/views/review_console.sql): flags confirmed by the
-- decisions RAs made that day, per policy and model.
SELECT policy, classifier_model, decisions, violates, does_not_violate, unsure, precision::float AS precision,
       precision_low::float AS precision_low, precision_high::float AS precision_high
FROM ra_flag_precision
WHERE day = %(day)s::date
ORDER BY policy, classifier_model

-- name: day_decisions_by_ra
SELECT username, decisions, violates, does_not_violate, unsure
FROM ra_decisions_per_ra
WHERE day = %(day)s::date
ORDER BY username

-- name: review_agreement
-- Cohen's kappa over all double-coded items as of when the report is generated (the
-- schedule runs at 00:30 UTC, so for the day that just ended).
SELECT policy, items, observed_agreement::float AS observed_agreement, kappa::float AS kappa
FROM ra_agreement
ORDER BY policy

-- name: review_recall
-- Precision, recall and false-negative rate of the flags per policy and model with their
-- Wilson 95-percent intervals, from the recall audit sample, as of when the report is generated.
SELECT policy, classifier_model, threshold, flagged_items, unflagged_items, flag_decisions, audit_decisions,
       precision::float AS precision, precision_low::float AS precision_low, precision_high::float AS precision_high,
       miss_rate::float AS miss_rate, miss_rate_low::float AS miss_rate_low, miss_rate_high::float AS miss_rate_high,
       recall::float AS recall, recall_low::float AS recall_low, recall_high::float AS recall_high,
       false_negative_rate::float AS false_negative_rate, false_negative_rate_low::float AS false_negative_rate_low,
       false_negative_rate_high::float AS false_negative_rate_high
FROM ra_recall
ORDER BY policy, classifier_model

-- name: store_daily_summary
INSERT INTO daily_summaries (day, archives_processed, files_processed, files_failed, failed_by_stage,
                             top_errors, flagged_by_category, mean_confidence, audio_hours, files_per_hour,
                             review_precision, review_agreement, review_decisions_by_ra, review_recall)
VALUES (%(day)s, %(archives_processed)s, %(files_processed)s, %(files_failed)s, %(failed_by_stage)s,
        %(top_errors)s, %(flagged_by_category)s, %(mean_confidence)s, %(audio_hours)s, %(files_per_hour)s,
        %(review_precision)s, %(review_agreement)s, %(review_decisions_by_ra)s, %(review_recall)s)
ON CONFLICT (day) DO UPDATE SET
    archives_processed = EXCLUDED.archives_processed,
    files_processed = EXCLUDED.files_processed,
    files_failed = EXCLUDED.files_failed,
    failed_by_stage = EXCLUDED.failed_by_stage,
    top_errors = EXCLUDED.top_errors,
    flagged_by_category = EXCLUDED.flagged_by_category,
    mean_confidence = EXCLUDED.mean_confidence,
    audio_hours = EXCLUDED.audio_hours,
    files_per_hour = EXCLUDED.files_per_hour,
    review_precision = EXCLUDED.review_precision,
    review_agreement = EXCLUDED.review_agreement,
    review_decisions_by_ra = EXCLUDED.review_decisions_by_ra,
    review_recall = EXCLUDED.review_recall,
    generated_at = now()

-- name: archive_progress
-- A file's status only moves forward, so "converted" counts every file that got that far.
SELECT archive_source AS archive_key, partition_key,
       count(*) FILTER (WHERE status <> 'removed') AS files,
       count(*) FILTER (WHERE status IN ('converted', 'transcribed', 'classified')) AS converted,
       count(*) FILTER (WHERE status IN ('transcribed', 'classified')) AS transcribed,
       count(*) FILTER (WHERE status = 'classified') AS classified,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       max(processed_at) AS last_change
FROM audio_files
WHERE %(archive_key)s::text IS NULL OR archive_source = %(archive_key)s
GROUP BY archive_source, partition_key
ORDER BY max(processed_at) DESC NULLS FIRST, archive_source
LIMIT %(limit)s

-- name: open_archive_failures
-- Archives that broke before any file got a row (unreadable tar, no MP3) show only here.
SELECT archive_source AS archive_key, partition_key, stage, error
FROM processing_failures
WHERE resolved_at IS NULL AND original_filename = ''
  AND (%(archive_key)s::text IS NULL OR archive_source = %(archive_key)s)
ORDER BY failed_at DESC
LIMIT %(limit)s

-- name: files_per_archive
SELECT archive_source, count(*) FILTER (WHERE status <> 'removed') AS files,
       count(*) FILTER (WHERE status IN ('converted', 'transcribed', 'classified')) AS converted,
       count(*) FILTER (WHERE status IN ('transcribed', 'classified')) AS transcribed,
       count(*) FILTER (WHERE status = 'classified') AS classified,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(parquet_metadata) AS with_metadata,
       round(sum(duration_seconds)::numeric, 1) AS audio_seconds
FROM audio_files
GROUP BY archive_source
ORDER BY archive_source

-- name: transcript_overview
SELECT a.original_filename, t.language, round(t.confidence::numeric, 3) AS confidence,
       left(t.transcript_text, 70) AS transcript
FROM transcripts AS t
JOIN audio_files AS a ON a.id = t.audio_file_id
WHERE a.status <> 'removed'
ORDER BY a.archive_source, a.original_filename

-- name: daily_stats
SELECT * FROM daily_stats

-- name: ra_queue_overview
SELECT audio_file_id, flag_category, round(flag_score::numeric, 3) AS score, classifier_model,
       left(transcript_text, 60) AS transcript, opus_key
FROM ra_queue
LIMIT 10

-- name: open_failures_overview
SELECT archive_source, original_filename, stage, left(error, 70) AS error
FROM processing_failures
WHERE resolved_at IS NULL
ORDER BY archive_source, original_filename
