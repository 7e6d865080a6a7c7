-- The review console's accounts and sessions. Operator statements (add_user, set_password,
-- disable_user, enable_user, set_role, console logins) run with the migrating role; the
-- console itself (role ra_app) reads views and inserts.

-- name: add_user
INSERT INTO ra_users (username, password_hash, role) VALUES (%(username)s, %(password_hash)s, %(role)s)

-- name: set_password
-- A new password ends every session of the account (a new epoch, migration 015). It never
-- enables a disabled account: that is `enable_user`, a separate decision.
UPDATE ra_users SET password_hash = %(password_hash)s, session_epoch = session_epoch + 1
WHERE username = %(username)s
RETURNING disabled

-- name: disable_user
UPDATE ra_users SET disabled = true, session_epoch = session_epoch + 1 WHERE username = %(username)s

-- name: enable_user
-- Sessions from before the account was disabled stay over: disabling moved the epoch on.
UPDATE ra_users SET disabled = false WHERE username = %(username)s

-- name: set_role
UPDATE ra_users SET role = %(role)s WHERE username = %(username)s

-- name: account_by_name
SELECT id, username, password_hash, session_epoch, role FROM ra_accounts WHERE username = %(username)s

-- name: start_session
-- session_epoch is the one read with the password hash: a password changed while this
-- sign-in was being checked leaves the new session already over.
INSERT INTO ra_sessions (token_sha256, ra_user_id, session_epoch, csrf_token, expires_at, client_address, user_agent)
VALUES (%(token_sha256)s, %(ra_user_id)s, %(session_epoch)s, %(csrf_token)s,
        now() + make_interval(secs => %(ttl_s)s), %(client_address)s, %(user_agent)s)

-- name: live_session
SELECT ra_user_id, username, csrf_token, role FROM ra_live_sessions WHERE token_sha256 = %(token_sha256)s

-- name: end_session
-- Sign-out is an insert too; a second sign-out of the same session changes nothing.
INSERT INTO ra_session_ends (token_sha256)
SELECT token_sha256 FROM ra_live_sessions WHERE token_sha256 = %(token_sha256)s

-- name: sessions_of_ra
-- The RA's live sessions, newest first, for the sessions page: a sign-in elsewhere shows here.
SELECT token_sha256, created_at, expires_at, client_address, user_agent
FROM ra_live_sessions
WHERE ra_user_id = %(ra)s
ORDER BY created_at DESC
LIMIT 50

-- name: end_other_sessions
INSERT INTO ra_session_ends (token_sha256)
SELECT token_sha256 FROM ra_live_sessions WHERE ra_user_id = %(ra)s AND token_sha256 <> %(keep)s

-- name: role_excess_privileges
-- Run by the console at start: every privilege the current login holds beyond ra_app's grants
-- (migration 009 and sql/views/review_console.sql): on tables, views and sequences (also
-- column-level grants), schemas, this database, memberships in other roles (pg_read_all_data
-- included) and role attributes. No rows: the login is exactly an ra_app member. Not a
-- member of ra_app at all is reported too.
WITH allowed (object, privilege) AS (
    VALUES ('ra_sessions', 'INSERT'), ('ra_session_ends', 'INSERT'), ('ra_claims', 'INSERT'),
           ('ra_decisions', 'INSERT'),
           ('ra_claims_id_seq', 'USAGE'), ('ra_decisions_id_seq', 'USAGE'),
           ('ra_review_items', 'SELECT'), ('ra_latest_decisions', 'SELECT'), ('ra_active_claims', 'SELECT'),
           ('ra_accounts', 'SELECT'), ('ra_live_sessions', 'SELECT'), ('ra_transcript_search', 'SELECT'),
           ('ra_flag_precision', 'SELECT'), ('ra_double_coded_pairs', 'SELECT'), ('ra_agreement', 'SELECT'),
           ('ra_decisions_per_ra', 'SELECT'), ('ra_recall', 'SELECT'), ('ra_calibration', 'SELECT'),
           ('public', 'USAGE')
), relations AS (
    SELECT c.oid, c.relname, c.relkind
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%%'
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
), held (object, privilege) AS (
    SELECT r.relname, p.privilege
    FROM relations AS r
    CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) AS p (privilege)
    WHERE r.relkind <> 'S' AND has_any_column_privilege(current_user, r.oid, p.privilege)
    UNION ALL
    SELECT r.relname, p.privilege
    FROM relations AS r
    CROSS JOIN unnest(ARRAY['DELETE', 'TRUNCATE', 'TRIGGER']) AS p (privilege)
    WHERE r.relkind <> 'S' AND has_table_privilege(current_user, r.oid, p.privilege)
    UNION ALL
    SELECT r.relname, p.privilege
    FROM relations AS r
    CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p (privilege)
    WHERE r.relkind = 'S' AND has_sequence_privilege(current_user, r.oid, p.privilege)
    UNION ALL
    SELECT n.nspname, p.privilege
    FROM pg_namespace AS n
    CROSS JOIN unnest(ARRAY['CREATE', 'USAGE']) AS p (privilege)
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%%'
      AND has_schema_privilege(current_user, n.oid, p.privilege)
    UNION ALL
    SELECT 'database ' || current_database(), p.privilege
    FROM unnest(ARRAY['CREATE', 'TEMPORARY']) AS p (privilege)
    WHERE has_database_privilege(current_user, current_database(), p.privilege)
    UNION ALL
    SELECT 'role ' || r.rolname, 'MEMBER'
    FROM pg_roles AS r
    WHERE r.rolname NOT IN (current_user, 'ra_app') AND pg_has_role(current_user, r.oid, 'MEMBER')
    UNION ALL
    SELECT 'role ' || r.rolname, attribute
    FROM pg_roles AS r
    CROSS JOIN LATERAL (VALUES ('SUPERUSER', r.rolsuper), ('CREATEROLE', r.rolcreaterole),
                               ('CREATEDB', r.rolcreatedb), ('REPLICATION', r.rolreplication),
                               ('BYPASSRLS', r.rolbypassrls)) AS a (attribute, held)
    WHERE r.rolname = current_user AND a.held
    UNION ALL
    SELECT 'role ra_app', 'not a member'
    WHERE NOT pg_has_role(current_user, 'ra_app', 'MEMBER')
)
SELECT object, privilege FROM held
EXCEPT
SELECT object, privilege FROM allowed
ORDER BY object, privilege

-- name: console_login_role
-- What review-db-login needs to know of an existing role before it touches it.
SELECT r.rolname,
       shobj_description(r.oid, 'pg_authid') = %(marker)s AS created_here
FROM pg_roles AS r
WHERE r.rolname = %(role)s

-- name: console_login_statements
-- The console's own login role, a member of ra_app and nothing else, marked as made here.
-- Role names cannot be bound parameters, so the server quotes them (format() with I and L)
-- and the caller runs the result. ALTER only for a role this command made (checked first).
SELECT unnest(CASE WHEN %(exists)s
    THEN ARRAY[format('ALTER ROLE %%I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %%L',
                      %(role)s, %(password)s)]
    ELSE ARRAY[format('CREATE ROLE %%I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %%L IN ROLE ra_app',
                      %(role)s, %(password)s),
               format('COMMENT ON ROLE %%I IS %%L', %(role)s, %(marker)s)]
END) AS statement

-- name: grant_ra_app
SELECT format('GRANT ra_app TO %%I', %(role)s) AS statement
