-- Files per day and status over the last 7 days (today included), with audio hours.
CREATE OR REPLACE VIEW daily_stats WITH (security_barrier = true) AS
SELECT
    (coalesce(processed_at, created_at) AT TIME ZONE 'UTC')::date AS day,
    status,
    count(*)                                                      AS files,
    round(coalesce(sum(duration_seconds), 0)::numeric / 3600, 3)  AS audio_hours
FROM audio_files
WHERE coalesce(processed_at, created_at) >= (now() AT TIME ZONE 'UTC')::date - 6
GROUP BY 1, 2
ORDER BY 1 DESC, 2;

GRANT SELECT ON daily_stats TO ra_reader;
