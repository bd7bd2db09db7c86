-- Database Access Controls (PROVISIONING.md §6): the table privileges of a provisioned user in
-- the database the admin connection is in. Installed in pg_temp before use, like functions.sql
-- (whose helpers, installed first, these call as pg_temp.x), with the same rules: pinned
-- search_path, built-ins qualified, identifiers through format('%I'), values as parameters.
--
-- Failures the caller tells apart, by SQLSTATE:
--   DWU01  the user exists and is not managed by dbward
--   DWP03  a privilege granted is not in the table's ACL afterwards (DETAIL: which)
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

-- Privileges on relations of this database that the admin granted to `username` itself (not
-- through roles or PUBLIC), one row per privilege. Only grants the admin made, or made as a
-- role it acts for (the owner it is a member of; a superuser's grants are recorded as the
-- owner's): what dbward gives and takes back. Grants other users made to this user (on a
-- table of their own, a temporary one) are theirs to revoke; listing them would make the
-- admin try and fail. Temporary schemas are never looked at.
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
    AND c.relpersistence <> 't'
    AND NOT pg_catalog.starts_with(n.nspname::text, 'pg_temp_')
    AND NOT pg_catalog.starts_with(n.nspname::text, 'pg_toast_temp_')
    AND (a.grantor = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
         OR pg_catalog.pg_has_role(current_user, a.grantor, 'USAGE'))
  ORDER BY 1, 2, 3
$fn$;

-- USAGE on schemas that the admin granted to `username`, by the same rule.
CREATE OR REPLACE FUNCTION pg_temp.dbward_schema_usage(username text)
RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT DISTINCT s.nspname::text
  FROM pg_catalog.pg_namespace s
  CROSS JOIN LATERAL pg_catalog.aclexplode(s.nspacl) a
  JOIN pg_catalog.pg_roles u ON u.oid = a.grantee
  WHERE u.rolname = username AND a.privilege_type = 'USAGE'
    AND NOT pg_catalog.starts_with(s.nspname::text, 'pg_temp_')
    AND NOT pg_catalog.starts_with(s.nspname::text, 'pg_toast_temp_')
    AND (a.grantor = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
         OR pg_catalog.pg_has_role(current_user, a.grantor, 'USAGE'))
$fn$;

-- Revokes what the admin granted `username` on relations of this database, and USAGE on its
-- schemas. A statement that fails (the table went away, the admin lost its rights) is
-- skipped, not fatal: the rest is still revoked. Returns the number of relations revoked on.
CREATE OR REPLACE FUNCTION pg_temp.dbward_revoke_table_privileges(username text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r record;
  s text;
  n integer := 0;
BEGIN
  FOR r IN
    SELECT DISTINCT p.schema_name, p.table_name FROM pg_temp.dbward_table_privileges(username) p
  LOOP
    BEGIN
      EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %I.%I FROM %I', r.schema_name, r.table_name, username);
      n := n + 1;
    EXCEPTION WHEN insufficient_privilege OR undefined_table OR invalid_schema_name THEN
      RAISE WARNING 'dbward: could not revoke on %.%', r.schema_name, r.table_name;
    END;
  END LOOP;
  FOR s IN SELECT x FROM pg_temp.dbward_schema_usage(username) AS x LOOP
    BEGIN
      EXECUTE pg_catalog.format('REVOKE USAGE ON SCHEMA %I FROM %I', s, username);
    EXCEPTION WHEN insufficient_privilege OR invalid_schema_name THEN
      RAISE WARNING 'dbward: could not revoke usage on %', s;
    END;
  END LOOP;
  RETURN n;
END
$fn$;

-- For each (schemas[i].tables[i], privileges[i]): whether the admin may grant it (holds it
-- WITH GRANT OPTION, or owns the table, and may look it up: USAGE on its schema). Looked up
-- by OID, so a schema the admin cannot enter is a `false`, not an error.
CREATE OR REPLACE FUNCTION pg_temp.dbward_grantable(
  schemas text[], tables text[], privileges text[])
RETURNS boolean[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
  SELECT coalesce(pg_catalog.array_agg(
           coalesce(pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
                    AND pg_catalog.has_table_privilege(c.oid, t.p || ' WITH GRANT OPTION'),
                    false)
           ORDER BY t.n), '{}')
  FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(tables),
                 pg_catalog.unnest(privileges)) WITH ORDINALITY AS t(s, t, p, n)
  LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = t.s
  LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = t.t
$fn$;

-- Makes the table privileges of `username` in this database the given ones, as far as the
-- admin may give them: revokes what the user holds, then grants privilege i on table
-- schemas[i].tables[i] where the admin holds it WITH GRANT OPTION (or owns the table), and
-- USAGE on those schemas likewise. The user must be managed. Returns what was not given, as
-- 'PRIVILEGE on TABLE s.t' / 'USAGE on SCHEMA s', for the caller to report: a table the
-- admin cannot share (one another user created, say) costs the session that table only.
-- Every privilege granted is checked afterwards in the table's ACL.
CREATE OR REPLACE FUNCTION pg_temp.dbward_set_table_privileges(
  username text, marker text, schemas text[], tables text[], privileges text[])
RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  i integer;
  s text;
  relation text;
  granted boolean[] := '{}';
  skipped text[] := '{}';
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
    relation := pg_catalog.format('%I.%I', schemas[i], tables[i]);
    IF pg_temp.dbward_grantable(ARRAY[schemas[i]], ARRAY[tables[i]], ARRAY[privileges[i]]) = '{t}' THEN
      EXECUTE pg_catalog.format('GRANT %s ON TABLE %s TO %I', privileges[i], relation, username);
      granted := granted || true;
    ELSE
      skipped := skipped || pg_catalog.format('%s on TABLE %s', privileges[i], relation);
      granted := granted || false;
    END IF;
  END LOOP;
  -- USAGE only where a table privilege was granted: a schema whose tables the admin could
  -- not share gives the user nothing, not its functions and sequences.
  FOR s IN
    SELECT DISTINCT t.s FROM ROWS FROM (pg_catalog.unnest(schemas), pg_catalog.unnest(granted))
      AS t(s, g) WHERE t.g
  LOOP
    IF pg_catalog.has_schema_privilege(s, 'USAGE WITH GRANT OPTION') THEN
      EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', s, username);
    END IF;
    -- USAGE may also come from PUBLIC (schema public) or a role of the user's.
    IF NOT pg_catalog.has_schema_privilege(username, s, 'USAGE') THEN
      skipped := skipped || pg_catalog.format('USAGE on SCHEMA %I', s);
    END IF;
  END LOOP;
  FOR i IN 1 .. coalesce(pg_catalog.array_length(tables, 1), 0) LOOP
    IF granted[i] AND NOT EXISTS (
      SELECT 1 FROM pg_temp.dbward_table_privileges(username) p
      WHERE p.schema_name = schemas[i] AND p.table_name = tables[i]
        AND p.privilege = privileges[i])
    THEN
      RAISE EXCEPTION 'privilege granted but not held'
        USING ERRCODE = 'DWP03',
              DETAIL = pg_catalog.format('%s on TABLE %I.%I', privileges[i], schemas[i], tables[i]);
    END IF;
  END LOOP;
  RETURN skipped;
END
$fn$;

