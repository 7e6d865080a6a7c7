-- One definition of an item: a classification (file x policy x model) of a file that is
-- classified as its archive stands (so it has its Opus file). `reviewable_items` adds what a
-- reviewer needs: the transcript the score was computed from (the latest one for scores that
-- do not record it; an item whose transcript's text is no longer the scored text is left out
-- until it is scored again) with its timed segments, and the policy text the score was computed with
-- (policy_texts; NULL for scores stored before texts were kept);
-- `flagged_items` is their flagged subset. ra_queue (RAs' SQL) and the console's
-- ra_review_items both read these, so they cannot drift apart again; the statistics count
-- classified_items, without joining transcripts.
-- Plain views, not security_barrier, on purpose: no reader role selects from them (ra_reader and
-- ra_app read the barrier views built on them), and a plain view lets the planner apply the
-- outer views' filters before it joins the transcripts. Columns are listed, never `*` from
-- another view: a view file is re-run on every migrate and may only add columns at its end.
CREATE OR REPLACE VIEW classified_items AS
SELECT
    c.id                AS item_id,
    a.id                AS audio_file_id,
    a.archive_source,
    a.original_filename,
    a.opus_path         AS opus_key,
    a.s3_opus_path,
    a.duration_seconds,
    a.parquet_metadata,
    c.flag_category     AS policy,
    c.model             AS classifier_model,
    c.policy_version,
    c.flag_score,
    c.flagged,
    c.threshold,
    c.content_truncated,
    c.created_at        AS classified_at,   -- first scored as it stands (see upsert_classifications)
    c.transcript_id     AS scored_transcript_id,  -- the transcript the score was computed from
    c.transcript_md5    AS scored_transcript_md5  -- md5 of the text it was computed from
FROM classifications AS c
JOIN audio_files AS a ON a.id = c.audio_file_id
WHERE a.status = 'classified'
  AND a.opus_path IS NOT NULL;

CREATE OR REPLACE VIEW reviewable_items AS
SELECT
    i.item_id, i.audio_file_id, i.archive_source, i.original_filename, i.opus_key, i.s3_opus_path,
    i.duration_seconds, i.parquet_metadata, i.policy, i.classifier_model, i.policy_version, i.flag_score,
    i.flagged, i.threshold, i.content_truncated, i.classified_at,
    t.transcript_text,
    t.segments,
    t.language,
    t.confidence        AS transcript_confidence,
    p.policy_text
FROM classified_items AS i
LEFT JOIN LATERAL (
    SELECT tr.transcript_text, tr.segments, tr.language, tr.confidence
    FROM transcripts AS tr
    WHERE tr.audio_file_id = i.audio_file_id
    ORDER BY tr.id IS NOT DISTINCT FROM i.scored_transcript_id DESC, tr.created_at DESC
    LIMIT 1
) AS t ON true
LEFT JOIN policy_texts AS p ON p.policy = i.policy AND p.policy_version = i.policy_version
-- A transcript re-made in place (same model, same row, other text) no longer is the text the
-- score was computed from: the item waits for classifications to score the new text rather
-- than show a score beside text it was not computed from. Scores from before md5s were
-- recorded are shown as they were.
WHERE i.scored_transcript_md5 IS NULL OR md5(t.transcript_text) = i.scored_transcript_md5;

CREATE OR REPLACE VIEW flagged_items AS
SELECT * FROM reviewable_items WHERE flagged;

-- The threshold in force per policy and classifier model: the latest `review-thresholds`
-- choice (migration 016). Pairs without one use the pipeline's FLAG_THRESHOLD.
CREATE OR REPLACE VIEW current_policy_thresholds AS
SELECT DISTINCT ON (model, policy) policy, model, threshold, basis, set_at
FROM policy_thresholds
ORDER BY model, policy, id DESC;
