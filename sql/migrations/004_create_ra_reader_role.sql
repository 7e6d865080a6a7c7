-- RAs read the views and nothing else. Roles are cluster-wide, hence the existence check.
-- Grants on the views live in the view files, which are re-applied on every migrate.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ra_reader') THEN
        CREATE ROLE ra_reader NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ra_reader;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM ra_reader;
GRANT USAGE ON SCHEMA public TO ra_reader;
