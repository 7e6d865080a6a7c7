-- The RAs' review console (review/): accounts, sessions, claims and the decision log, and
-- the role the console connects as. The console reads only views (sql/views/review_console.sql)
-- and inserts rows; it never updates or deletes anything.

-- Accounts are created by operators (`audio-pipeline review-user add`), never by the console.
-- They are application accounts, not database roles: an RA holds no database privilege.
CREATE TABLE IF NOT EXISTS ra_users (
    id            BIGSERIAL   PRIMARY KEY,
    username      TEXT        NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9_.-]{1,63}$'),
    password_hash TEXT        NOT NULL,                  -- argon2id, encoded with its parameters
    disabled      BOOLEAN     NOT NULL DEFAULT false,    -- accounts are disabled, never deleted (audit)
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Server-side sessions: the cookie holds a random token, the table only its SHA-256, so a
-- copy of this table signs nobody in. Sign-out inserts into ra_session_ends.
CREATE TABLE IF NOT EXISTS ra_sessions (
    token_sha256 TEXT        PRIMARY KEY,
    ra_user_id   BIGINT      NOT NULL REFERENCES ra_users (id),
    csrf_token   TEXT        NOT NULL,                   -- sent back in every form the session posts
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS ra_session_ends (
    token_sha256 TEXT        PRIMARY KEY REFERENCES ra_sessions (token_sha256),
    ended_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who has an item open. A claim is a row that expires; opening the item again inserts a
-- fresh row, and a decision by the same RA ends it (see ra_active_claims). No FK to
-- classifications: claims and decisions are audit rows that outlive re-processing.
CREATE TABLE IF NOT EXISTS ra_claims (
    id         BIGSERIAL   PRIMARY KEY,
    item_id    BIGINT      NOT NULL,                     -- classifications.id
    ra_user_id BIGINT      NOT NULL REFERENCES ra_users (id),
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    CHECK (expires_at > claimed_at)
);
CREATE INDEX IF NOT EXISTS ra_claims_active_idx ON ra_claims (expires_at, item_id);

-- The audit log: one row per decision, never changed. A later decision by the same RA on the
-- same item supersedes an earlier one in the views; both stay here. The flag decided on
-- (model, policy version, score, when it was flagged) is copied in, so the row still says
-- what the RA saw after the item is re-scored.
CREATE TABLE IF NOT EXISTS ra_decisions (
    id               BIGSERIAL   PRIMARY KEY,
    item_id          BIGINT      NOT NULL,               -- classifications.id
    audio_file_id    BIGINT      NOT NULL,
    policy           TEXT        NOT NULL,               -- classifications.flag_category
    classifier_model TEXT        NOT NULL,
    policy_version   TEXT        NOT NULL,
    flag_score       DOUBLE PRECISION,
    flagged_at       TIMESTAMPTZ NOT NULL,
    decision         TEXT        NOT NULL CHECK (decision IN ('violates', 'does_not_violate', 'unsure')),
    reason           TEXT        NOT NULL DEFAULT '' CHECK (length(reason) <= 4000),
    ra_user_id       BIGINT      NOT NULL REFERENCES ra_users (id),
    decided_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ra_decisions_item_idx ON ra_decisions (item_id, ra_user_id, decided_at);
CREATE INDEX IF NOT EXISTS ra_decisions_day_idx ON ra_decisions (decided_at);

-- Append-only for everyone, owners included: privileges stop the console, the trigger stops
-- a mistaken UPDATE by an administrator too.
CREATE OR REPLACE FUNCTION ra_decisions_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ra_decisions is append-only: insert a new decision instead of %', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DROP TRIGGER IF EXISTS ra_decisions_append_only ON ra_decisions;
CREATE TRIGGER ra_decisions_append_only
    BEFORE UPDATE OR DELETE ON ra_decisions
    FOR EACH ROW EXECUTE FUNCTION ra_decisions_refuse_change();
DROP TRIGGER IF EXISTS ra_decisions_no_truncate ON ra_decisions;
CREATE TRIGGER ra_decisions_no_truncate
    BEFORE TRUNCATE ON ra_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION ra_decisions_refuse_change();

-- Full-text search over transcripts. 'simple' (no stemming, no stop words): transcripts come
-- in many languages and one language's stemmer would mangle the others. The view
-- ra_transcript_search uses the same expression, so the planner uses this index.
CREATE INDEX IF NOT EXISTS transcripts_text_search_idx
    ON transcripts USING GIN (to_tsvector('simple', transcript_text));

-- The daily report carries the review figures of the day (see sql/queries/reports.sql).
ALTER TABLE daily_summaries
    ADD COLUMN IF NOT EXISTS review_precision       JSONB NOT NULL DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS review_agreement       JSONB NOT NULL DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS review_decisions_by_ra JSONB NOT NULL DEFAULT '[]';

-- The console's role. NOLOGIN: a login role for the console is made a member of it
-- (deploy/README.md; the demo creates one). Roles are cluster-wide, hence the check.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ra_app') THEN
        CREATE ROLE ra_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ra_app;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ra_app;
REVOKE ALL ON FUNCTION ra_decisions_refuse_change() FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO ra_app;
-- INSERT only, and no RETURNING in the console's statements (that would need SELECT).
GRANT INSERT ON ra_sessions, ra_session_ends, ra_claims, ra_decisions TO ra_app;
GRANT USAGE ON SEQUENCE ra_claims_id_seq, ra_decisions_id_seq TO ra_app;
-- Grants on the views live in the view file, re-applied on every migrate.
