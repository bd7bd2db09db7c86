-- Helper functions of one admin connection, installed once when the connection is opened.
-- They live in pg_temp: they vanish with the connection, nothing is left in user schemas and
-- no CREATE privilege on any schema is needed (only TEMPORARY on the database).
--
-- Every identifier reaches SQL through format('%I'); every value arrives as a parameter.
-- Failures the caller must tell apart are raised with SQLSTATEs of the private class DW, and
-- DETAIL carries the role name concerned, so the caller never reads server message text:
--   DWU01  the user exists and is not a member of the marker role
--   DWU02  the user has live sessions holding other roles than requested
--   DWR01  a requested role does not exist            (DETAIL: role)
--   DWP01  the admin lacks CREATEROLE
--   DWP02  the admin may not grant or revoke a role   (DETAIL: role)

-- Whether `username` exists.
CREATE OR REPLACE FUNCTION pg_temp.dbward_exists(username text) RETURNS boolean
LANGUAGE sql STABLE AS $fn$
  SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = username)
$fn$;

-- Whether `username` is a direct member of the marker role, i.e. was created by dbward.
CREATE OR REPLACE FUNCTION pg_temp.dbward_is_managed(username text, marker text) RETURNS boolean
LANGUAGE sql STABLE AS $fn$
  SELECT EXISTS (
    SELECT 1
    FROM pg_catalog.pg_auth_members m
    JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
    JOIN pg_catalog.pg_roles u ON u.oid = m.member
    WHERE g.rolname = marker AND u.rolname = username)
$fn$;

-- Roles `username` holds directly, without the marker role.
CREATE OR REPLACE FUNCTION pg_temp.dbward_held_roles(username text, marker text) RETURNS text[]
LANGUAGE sql STABLE AS $fn$
  SELECT coalesce(array_agg(DISTINCT g.rolname::text), '{}')
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
  JOIN pg_catalog.pg_roles u ON u.oid = m.member
  WHERE u.rolname = username AND g.rolname <> marker
$fn$;

-- Sessions of `username` in every database of the cluster. pg_stat_activity shows the user
-- of every backend to every role, even when the other columns are hidden.
CREATE OR REPLACE FUNCTION pg_temp.dbward_live_sessions(username text) RETURNS bigint
LANGUAGE sql STABLE AS $fn$
  SELECT count(*)
  FROM pg_catalog.pg_stat_activity a
  JOIN pg_catalog.pg_roles u ON u.oid = a.usesysid
  WHERE u.rolname = username
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.dbward_require_createrole() RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                 WHERE rolname = current_user AND (rolcreaterole OR rolsuper)) THEN
    RAISE EXCEPTION 'admin user lacks CREATEROLE' USING ERRCODE = 'DWP01';
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.dbward_grant(username text, roles text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY roles LOOP
    BEGIN
      EXECUTE format('GRANT %I TO %I', r, username);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'admin user may not grant this role' USING ERRCODE = 'DWP02', DETAIL = r;
    END;
  END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.dbward_revoke(username text, roles text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY roles LOOP
    BEGIN
      EXECUTE format('REVOKE %I FROM %I', r, username);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'admin user may not revoke this role' USING ERRCODE = 'DWP02', DETAIL = r;
    END;
  END LOOP;
END
$fn$;

-- Creates the marker role when missing (another gateway may create it at the same moment)
-- and, from PostgreSQL 16 on, makes sure the admin holds it WITH ADMIN OPTION so that it can
-- grant it.
CREATE OR REPLACE FUNCTION pg_temp.dbward_ensure_marker(marker text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  IF NOT pg_temp.dbward_exists(marker) THEN
    BEGIN
      EXECUTE format('CREATE ROLE %I NOLOGIN', marker);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
  IF pg_catalog.current_setting('server_version_num')::int >= 160000
     AND NOT pg_catalog.pg_has_role(current_user, marker::name, 'MEMBER WITH ADMIN OPTION') THEN
    BEGIN
      EXECUTE format('GRANT %I TO %I WITH ADMIN OPTION', marker, current_user);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'admin user may not grant the marker role'
        USING ERRCODE = 'DWP02', DETAIL = marker;
    END;
  END IF;
END
$fn$;

-- Activation, one transaction. Returns 'created', 'reactivated' or 'already_active'.
CREATE OR REPLACE FUNCTION pg_temp.dbward_activate(username text, requested text[], marker text)
RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
  r text;
  held text[];
BEGIN
  IF username = marker THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01';
  END IF;
  FOREACH r IN ARRAY requested LOOP
    IF NOT pg_temp.dbward_exists(r) THEN
      RAISE EXCEPTION 'database role does not exist' USING ERRCODE = 'DWR01', DETAIL = r;
    END IF;
  END LOOP;

  IF NOT pg_temp.dbward_exists(username) THEN
    PERFORM pg_temp.dbward_require_createrole();
    PERFORM pg_temp.dbward_ensure_marker(marker);
    EXECUTE format('CREATE ROLE %I LOGIN', username);
    PERFORM pg_temp.dbward_grant(username, ARRAY[marker]);
    PERFORM pg_temp.dbward_grant(username, requested);
    RETURN 'created';
  END IF;

  IF NOT pg_temp.dbward_is_managed(username, marker) THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01';
  END IF;

  held := pg_temp.dbward_held_roles(username, marker);
  IF pg_temp.dbward_live_sessions(username) > 0 THEN
    -- Compare as sets: order and duplicates do not matter.
    IF held @> requested AND requested @> held THEN
      IF NOT (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = username) THEN
        PERFORM pg_temp.dbward_require_createrole();
        EXECUTE format('ALTER ROLE %I LOGIN', username);
      END IF;
      RETURN 'already_active';
    END IF;
    RAISE EXCEPTION 'roles for user have changed' USING ERRCODE = 'DWU02';
  END IF;

  -- Idle: start from a clean slate, which also repairs a user left active by a crash.
  PERFORM pg_temp.dbward_require_createrole();
  PERFORM pg_temp.dbward_revoke(username, held);
  EXECUTE format('ALTER ROLE %I LOGIN', username);
  PERFORM pg_temp.dbward_grant(username, requested);
  RETURN 'reactivated';
END
$fn$;

-- First step of teardown: refuse new logins. Committed on its own so that the second step's
-- look at pg_stat_activity cannot miss a session that logged in meanwhile.
-- Returns 'missing', 'active' or 'disabled'.
CREATE OR REPLACE FUNCTION pg_temp.dbward_disable_login(username text, marker text) RETURNS text
LANGUAGE plpgsql AS $fn$
BEGIN
  IF NOT pg_temp.dbward_exists(username) THEN
    RETURN 'missing';
  END IF;
  IF username = marker OR NOT pg_temp.dbward_is_managed(username, marker) THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01';
  END IF;
  IF pg_temp.dbward_live_sessions(username) > 0 THEN
    RETURN 'active';
  END IF;
  PERFORM pg_temp.dbward_require_createrole();
  EXECUTE format('ALTER ROLE %I NOLOGIN', username);
  RETURN 'disabled';
END
$fn$;

-- Second step of teardown, after dbward_disable_login committed. A session that slipped in
-- before login was disabled keeps the user usable: login is enabled again and nothing else
-- changes. Otherwise the user is dropped (drop_user) or, when that is refused because
-- objects depend on it, or when keeping, stripped of every role but the marker.
-- Returns 'missing', 'active', 'locked', 'dropped' or 'dependent' (locked instead of dropped).
CREATE OR REPLACE FUNCTION pg_temp.dbward_finish_teardown(username text, marker text, drop_user boolean)
RETURNS text
LANGUAGE plpgsql AS $fn$
BEGIN
  IF NOT pg_temp.dbward_exists(username) THEN
    RETURN 'missing';
  END IF;
  IF username = marker OR NOT pg_temp.dbward_is_managed(username, marker) THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01';
  END IF;
  IF pg_temp.dbward_live_sessions(username) > 0 THEN
    EXECUTE format('ALTER ROLE %I LOGIN', username);
    RETURN 'active';
  END IF;
  IF drop_user THEN
    BEGIN
      EXECUTE format('DROP ROLE %I', username);
      RETURN 'dropped';
    EXCEPTION WHEN dependent_objects_still_exist THEN
      NULL;
    END;
  END IF;
  PERFORM pg_temp.dbward_revoke(username, pg_temp.dbward_held_roles(username, marker));
  IF drop_user THEN
    RETURN 'dependent';
  END IF;
  RETURN 'locked';
END
$fn$;
