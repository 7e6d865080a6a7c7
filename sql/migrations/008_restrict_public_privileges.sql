-- Nobody but the roles that own the schema creates objects here: no tables, functions or
-- temporary objects for ra_reader (or any role given only view access). A function an RA
-- could create would be the classic way to read rows a view filters out.
-- The role running migrations keeps what it needs.
DO $$
BEGIN
    EXECUTE format('GRANT CREATE, USAGE ON SCHEMA public TO %I', current_user);
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), current_user);
END
$$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
