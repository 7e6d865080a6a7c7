-- The review console's accounts and sessions, hardened (issue 17).

-- session_epoch: a session signs its RA in only while it carries the account's current epoch.
-- A new password and disabling the account bump it, so every session started before ends at
-- once; enabling an account does not bring them back. The console copies the epoch it read
-- with the password hash into the session it starts, so a sign-in racing a password change
-- starts a session that is already over.
-- role: 'lead' sees everyone's figures (agreement, decisions per RA, recall, calibration); an
-- 'ra' sees their own decisions and figures that cannot reveal an item they may still code.
-- pseudonym: what exports carry instead of the user name (random, so it says nothing about
-- the account; stable, so an analysis can follow one RA across exports).
ALTER TABLE ra_users
    ADD COLUMN IF NOT EXISTS session_epoch INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS role          TEXT    NOT NULL DEFAULT 'ra' CHECK (role IN ('ra', 'lead')),
    ADD COLUMN IF NOT EXISTS pseudonym     TEXT    NOT NULL DEFAULT ('ra-' || left(md5(gen_random_uuid()::text), 12));
CREATE UNIQUE INDEX IF NOT EXISTS ra_users_pseudonym_key ON ra_users (pseudonym);

-- Where and in what a session was started, so an RA sees a sign-in elsewhere (/sessions).
ALTER TABLE ra_sessions
    ADD COLUMN IF NOT EXISTS session_epoch  INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS client_address TEXT    NOT NULL DEFAULT '' CHECK (length(client_address) <= 64),
    ADD COLUMN IF NOT EXISTS user_agent     TEXT    NOT NULL DEFAULT '' CHECK (length(user_agent) <= 256);
CREATE INDEX IF NOT EXISTS ra_sessions_user_idx ON ra_sessions (ra_user_id, expires_at);

-- What the RA decided on: whether the item was flagged (false: a recall-audit item) and the
-- threshold in force, copied in like the score. NULL flagged: decided before the audit sample
-- existed, when every item in the queue was flagged.
ALTER TABLE ra_decisions
    ADD COLUMN IF NOT EXISTS flagged   BOOLEAN,
    ADD COLUMN IF NOT EXISTS threshold DOUBLE PRECISION;

-- `review-db-login` marks the roles it creates with this comment and refuses any other
-- existing role (it used to ALTER whatever name it was given). Roles the old command made
-- look exactly like this: LOGIN, a member of ra_app and of nothing else, no attribute beyond
-- LOGIN. They are adopted here so a second `review-db-login` (or demo) run keeps working.
DO $$
DECLARE
    candidate RECORD;
BEGIN
    FOR candidate IN
        SELECT r.oid, r.rolname
        FROM pg_roles AS r
        WHERE r.rolcanlogin AND NOT (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls)
          AND shobj_description(r.oid, 'pg_authid') IS NULL
          AND (SELECT array_agg(m.roleid::regrole::text) FROM pg_auth_members AS m WHERE m.member = r.oid) = ARRAY['ra_app']
    LOOP
        BEGIN
            EXECUTE format('COMMENT ON ROLE %I IS %L', candidate.rolname, 'audio-pipeline review console login');
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'could not mark role % as a review console login', candidate.rolname;
        END;
    END LOOP;
END
$$;
