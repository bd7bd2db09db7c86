-- Database Access Controls (PROVISIONING.md §6): the table privileges of a provisioned user in
-- the database the admin connection is in. Installed in pg_temp before use, like functions.sql
-- (whose helpers, installed first, these call as pg_temp.x), with the same rules: pinned
-- search_path, built-ins qualified, identifiers through format('%I'), values as parameters.
--
-- Failures the caller tells apart, by SQLSTATE:
--   DWU01  the user exists and is not managed by dbward
--   DWP03  the admin could not grant a privilege (DETAIL: table s.t or schema s, HINT: privilege)
--   DWP04  a privilege name outside the seven table privileges (DETAIL: name)

-- Tables of this database that import rules may label: ordinary and partitioned tables
-- outside the system schemas (pg_catalog, information_schema, pg_toast, temporary schemas).
CREATE OR REPLACE FUNCTION pg_temp.dbward_tables()
RETURNS TABLE (schema_name text, table_name text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT n.nspname::text, c.relname::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p')
    AND n.nspname <> 'information_schema'
    AND NOT pg_catalog.starts_with(n.nspname::text, 'pg_')
  ORDER BY 1, 2
$fn$;

-- Privileges granted to `username` itself (not through roles or PUBLIC) on relations of this
-- database, one row per privilege.
CREATE OR REPLACE FUNCTION pg_temp.dbward_table_privileges(username text)
RETURNS TABLE (schema_name text, table_name text, privilege text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT DISTINCT n.nspname::text, c.relname::text, a.privilege_type::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
  JOIN pg_catalog.pg_roles u ON u.oid = a.grantee
  WHERE u.rolname = username
    AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  ORDER BY 1, 2, 3
$fn$;

-- Revokes every privilege `username` holds on relations of this database, and USAGE on its
-- schemas. Returns the number of relations it held privileges on.
CREATE OR REPLACE FUNCTION pg_temp.dbward_revoke_table_privileges(username text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r record;
  n integer := 0;
BEGIN
  FOR r IN
    SELECT DISTINCT p.schema_name, p.table_name FROM pg_temp.dbward_table_privileges(username) p
  LOOP
    EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %I.%I FROM %I', r.schema_name, r.table_name, username);
    n := n + 1;
  END LOOP;
  FOR r IN
    SELECT DISTINCT s.nspname::text AS schema_name
    FROM pg_catalog.pg_namespace s
    CROSS JOIN LATERAL pg_catalog.aclexplode(s.nspacl) a
    JOIN pg_catalog.pg_roles u ON u.oid = a.grantee
    WHERE u.rolname = username AND a.privilege_type = 'USAGE'
  LOOP
    EXECUTE pg_catalog.format('REVOKE USAGE ON SCHEMA %I FROM %I', r.schema_name, username);
  END LOOP;
  RETURN n;
END
$fn$;

-- Makes the table privileges of `username` in this database exactly the given ones: revokes
-- what it holds, then grants privilege i on table schemas[i].tables[i], and USAGE on those
-- schemas. The user must be managed. Every privilege is checked afterwards in the table's
-- ACL: PostgreSQL only warns when the admin lacks the grant option, and a session must never
-- start with less (or other) than its computed set without anyone knowing.
CREATE OR REPLACE FUNCTION pg_temp.dbward_set_table_privileges(
  username text, marker text, schemas text[], tables text[], privileges text[])
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  i integer;
  s text;
BEGIN
  IF NOT pg_temp.dbward_is_managed(username, marker) THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01', DETAIL = username;
  END IF;
  PERFORM pg_temp.dbward_revoke_table_privileges(username);
  FOR i IN 1 .. coalesce(pg_catalog.array_length(tables, 1), 0) LOOP
    IF NOT privileges[i] = ANY (ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                      'REFERENCES', 'TRIGGER']) THEN
      RAISE EXCEPTION 'not a table privilege' USING ERRCODE = 'DWP04', DETAIL = privileges[i];
    END IF;
    BEGIN
      EXECUTE pg_catalog.format('GRANT %s ON TABLE %I.%I TO %I',
                                privileges[i], schemas[i], tables[i], username);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'privilege not granted'
        USING ERRCODE = 'DWP03', DETAIL = pg_catalog.format('table %I.%I', schemas[i], tables[i]),
              HINT = privileges[i];
    END;
  END LOOP;
  FOR s IN SELECT DISTINCT x FROM pg_catalog.unnest(schemas) AS x LOOP
    BEGIN
      EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', s, username);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'privilege not granted'
        USING ERRCODE = 'DWP03', DETAIL = pg_catalog.format('schema %I', s), HINT = 'USAGE';
    END;
  END LOOP;
  FOR i IN 1 .. coalesce(pg_catalog.array_length(tables, 1), 0) LOOP
    IF NOT EXISTS (
      SELECT 1 FROM pg_temp.dbward_table_privileges(username) p
      WHERE p.schema_name = schemas[i] AND p.table_name = tables[i]
        AND p.privilege = privileges[i])
    THEN
      RAISE EXCEPTION 'privilege not granted'
        USING ERRCODE = 'DWP03', DETAIL = pg_catalog.format('table %I.%I', schemas[i], tables[i]),
              HINT = privileges[i];
    END IF;
  END LOOP;
  FOR s IN SELECT DISTINCT x FROM pg_catalog.unnest(schemas) AS x LOOP
    IF NOT pg_catalog.has_schema_privilege(username, s, 'USAGE') THEN
      RAISE EXCEPTION 'privilege not granted'
        USING ERRCODE = 'DWP03', DETAIL = pg_catalog.format('schema %I', s), HINT = 'USAGE';
    END IF;
  END LOOP;
END
$fn$;
