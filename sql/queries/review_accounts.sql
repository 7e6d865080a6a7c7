-- The review console's accounts and sessions. Operator statements (add_user, set_password)
-- run with the migrating role; the console itself (role ra_app) reads views and inserts.

-- name: add_user
INSERT INTO ra_users (username, password_hash) VALUES (%(username)s, %(password_hash)s)

-- name: set_password
UPDATE ra_users SET password_hash = %(password_hash)s, disabled = false WHERE username = %(username)s

-- name: disable_user
UPDATE ra_users SET disabled = true WHERE username = %(username)s

-- name: account_by_name
SELECT id, username, password_hash FROM ra_accounts WHERE username = %(username)s

-- name: start_session
INSERT INTO ra_sessions (token_sha256, ra_user_id, csrf_token, expires_at)
VALUES (%(token_sha256)s, %(ra_user_id)s, %(csrf_token)s, now() + make_interval(secs => %(ttl_s)s))

-- name: live_session
SELECT ra_user_id, username, csrf_token FROM ra_live_sessions WHERE token_sha256 = %(token_sha256)s

-- name: end_session
-- Sign-out is an insert too; a second sign-out of the same session changes nothing.
INSERT INTO ra_session_ends (token_sha256)
SELECT token_sha256 FROM ra_live_sessions WHERE token_sha256 = %(token_sha256)s

-- name: role_check
-- Run by the console at start: it must not run as a superuser or a role that reads tables.
SELECT r.rolsuper AS superuser,
       pg_has_role(current_user, 'ra_app', 'MEMBER') AS in_ra_app,
       has_table_privilege(current_user, 'classifications', 'SELECT') AS reads_base_tables
FROM pg_roles AS r
WHERE r.rolname = current_user

-- name: console_login_statement
-- The console's own login role, a member of ra_app and nothing else. Role names cannot be
-- bound parameters, so the server quotes them (format() with I and L) and the caller runs the result.
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s)
            THEN format('ALTER ROLE %%I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %%L', %(role)s, %(password)s)
            ELSE format('CREATE ROLE %%I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %%L IN ROLE ra_app',
                        %(role)s, %(password)s)
       END AS statement

-- name: grant_ra_app
SELECT format('GRANT ra_app TO %%I', %(role)s) AS statement
