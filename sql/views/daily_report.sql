-- The daily report as RAs read it, newest day first. The review_* columns (migrations 009 and
-- 017) come last because CREATE OR REPLACE VIEW may only add columns at the end.
CREATE OR REPLACE VIEW daily_report WITH (security_barrier = true) AS
SELECT day, archives_processed, files_processed, files_failed, failed_by_stage, top_errors,
       flagged_by_category, mean_confidence, audio_hours, files_per_hour, generated_at,
       review_precision, review_agreement, review_decisions_by_ra, review_recall
FROM daily_summaries
ORDER BY day DESC;

GRANT SELECT ON daily_report TO ra_reader;
