-- The daily report as RAs read it, newest day first.
CREATE OR REPLACE VIEW daily_report WITH (security_barrier = true) AS
SELECT day, archives_processed, files_processed, files_failed, failed_by_stage, top_errors,
       flagged_by_category, mean_confidence, audio_hours, files_per_hour, generated_at
FROM daily_summaries
ORDER BY day DESC;

GRANT SELECT ON daily_report TO ra_reader;
