-- Decisions for analysis (`audio-pipeline review-export`), run as the owner. Every row of the
-- append-only log; `standing` marks each RA's latest decision per item version (the one the
-- views count). RAs appear as their pseudonym; their user name only when asked for.

-- name: decisions
SELECT
    d.id                           AS decision_id,
    d.item_id,
    d.audio_file_id,
    a.archive_source,
    a.original_filename,
    d.policy,
    d.classifier_model,
    d.policy_version,
    d.flag_score,
    d.threshold,
    coalesce(d.flagged, true)      AS flagged,
    d.flagged_at                   AS queued_at,
    d.decision,
    d.reason,
    d.decided_at,
    u.pseudonym                    AS ra,
    CASE WHEN %(with_names)s THEN u.username END AS ra_username,
    row_number() OVER (PARTITION BY d.item_id, d.policy_version, d.ra_user_id
                       ORDER BY d.decided_at DESC, d.id DESC) = 1 AS standing
FROM ra_decisions AS d
JOIN ra_users AS u ON u.id = d.ra_user_id
LEFT JOIN audio_files AS a ON a.id = d.audio_file_id
ORDER BY d.id
