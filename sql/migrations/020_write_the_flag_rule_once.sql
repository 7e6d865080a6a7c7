-- The flag rule, written once: an item is flagged when its score reaches the threshold in force
-- for its policy and model. Both writers of classifications.flagged use it: the pipeline's
-- classifications step (sql/queries/classifications.sql, upsert_classifications) and applying a
-- calibrated threshold (`audio-pipeline review-thresholds --apply`, apply_threshold there too).
CREATE OR REPLACE FUNCTION is_flagged(score DOUBLE PRECISION, threshold DOUBLE PRECISION) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT score IS NOT NULL AND score >= threshold
$$;
