-- Helper functions of one admin connection, installed once when the connection is opened.
-- They live in pg_temp: they vanish with the connection, nothing is left in user schemas and
-- no CREATE privilege on any schema is needed (only TEMPORARY on the database).
--
-- The users these functions manage are adversaries: they may create functions, aggregates and
-- operators in any schema they can write to. So every function pins
-- `SET search_path = pg_catalog, pg_temp` (pg_temp is never searched for functions or
-- operators), calls built-ins schema-qualified (pg_catalog.format, pg_catalog.array_agg,
-- OPERATOR(pg_catalog.@>), ...) and calls the other helpers as pg_temp.x; the connection
-- itself runs with the same search_path (pool.rs). Nothing a user creates is ever resolved.
--
-- Every identifier reaches SQL through format('%I'); every value arrives as a parameter.
-- Failures the caller must tell apart are raised with SQLSTATEs of the private class DW, and
-- DETAIL carries the name concerned, so the caller never reads server message text:
--   DWU01  the user exists and is not managed by dbward
--   DWU02  the user has live sessions holding other roles than requested
--   DWU03  the user has attributes or memberships the admin cannot remove (DETAIL: user)
--   DWR01  a requested role does not exist            (DETAIL: role)
--   DWR02  a requested role may never be granted      (DETAIL: role, HINT: why)
--   DWP01  the admin lacks CREATEROLE
--   DWP02  the admin may not grant or revoke a role   (DETAIL: role)
--
-- pg_temp.dbward_forbidden_roles(requested text[], marker text, allowed text[]) is installed
-- with these, its body being forbidden_roles.sql (shared with the preflight).
--
-- Every helper is PL/pgSQL, even the one-query ones: PL/pgSQL keeps the plan of each of its
-- queries for the life of the connection, where a LANGUAGE sql function with a SET clause is
-- parsed and planned again at every call (it cannot be inlined). The connection plans
-- generically (plan_cache_mode, conn.rs), so a warm connection plans nothing at all.

-- Whether `username` exists.
CREATE OR REPLACE FUNCTION pg_temp.dbward_exists(username text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = username);
END
$fn$;

-- Whether dbward manages `username`: a member of the marker role without ADMIN OPTION, and
-- not the admin itself. Members WITH ADMIN OPTION (the admin on PostgreSQL 16+, another
-- gateway's admin, a DBA) administer the marker; they are not users dbward created.
CREATE OR REPLACE FUNCTION pg_temp.dbward_is_managed(username text, marker text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  RETURN username <> current_user
    AND EXISTS (
      SELECT 1
      FROM pg_catalog.pg_auth_members m
      JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
      JOIN pg_catalog.pg_roles u ON u.oid = m.member
      WHERE g.rolname = marker AND u.rolname = username AND NOT m.admin_option)
    AND NOT EXISTS (
      SELECT 1
      FROM pg_catalog.pg_auth_members m
      JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
      JOIN pg_catalog.pg_roles u ON u.oid = m.member
      WHERE g.rolname = marker AND u.rolname = username AND m.admin_option);
END
$fn$;

-- Roles `username` holds directly, without the marker role.
CREATE OR REPLACE FUNCTION pg_temp.dbward_held_roles(username text, marker text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  RETURN (SELECT coalesce(pg_catalog.array_agg(DISTINCT g.rolname::text), '{}')
          FROM pg_catalog.pg_auth_members m
          JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
          JOIN pg_catalog.pg_roles u ON u.oid = m.member
          WHERE u.rolname = username AND g.rolname <> marker);
END
$fn$;

-- Sessions of `username` in every database of the cluster. pg_stat_activity shows the user
-- of every backend to every role, even when the other columns are hidden.
CREATE OR REPLACE FUNCTION pg_temp.dbward_live_sessions(username text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  RETURN (SELECT pg_catalog.count(*)
          FROM pg_catalog.pg_stat_activity a
          JOIN pg_catalog.pg_roles u ON u.oid = a.usesysid
          WHERE u.rolname = username);
END
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.dbward_require_createrole() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                 WHERE rolname = current_user AND (rolcreaterole OR rolsuper)) THEN
    RAISE EXCEPTION 'admin user lacks CREATEROLE' USING ERRCODE = 'DWP01';
  END IF;
END
$fn$;

-- Refuses the request unless every role in `requested` exists, may be granted to a
-- provisioned user, and is held by the admin WITH ADMIN OPTION (a superuser admin holds
-- every role so). Runs before anything is created or granted.
CREATE OR REPLACE FUNCTION pg_temp.dbward_check_requested(requested text[], marker text, allowed text[])
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r text;
  refused record;
BEGIN
  FOREACH r IN ARRAY requested LOOP
    IF NOT pg_temp.dbward_exists(r) THEN
      RAISE EXCEPTION 'database role does not exist' USING ERRCODE = 'DWR01', DETAIL = r;
    END IF;
  END LOOP;
  FOR refused IN SELECT * FROM pg_temp.dbward_forbidden_roles(requested, marker, allowed) LOOP
    RAISE EXCEPTION 'database role may never be granted'
      USING ERRCODE = 'DWR02', DETAIL = refused.role_name, HINT = refused.why;
  END LOOP;
  FOREACH r IN ARRAY requested LOOP
    IF NOT pg_catalog.pg_has_role(current_user, r::name, 'MEMBER WITH ADMIN OPTION') THEN
      RAISE EXCEPTION 'admin user does not hold this role WITH ADMIN OPTION'
        USING ERRCODE = 'DWP02', DETAIL = r;
    END IF;
  END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.dbward_grant(username text, roles text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY roles LOOP
    BEGIN
      EXECUTE pg_catalog.format('GRANT %I TO %I', r, username);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'admin user may not grant this role' USING ERRCODE = 'DWP02', DETAIL = r;
    END;
  END LOOP;
END
$fn$;

-- Makes `username` a member of the marker role. From PostgreSQL 16 on the membership carries
-- neither INHERIT nor SET: it only marks the user as dbward's, and the user cannot SET ROLE to
-- the marker (objects created under it would be shared by every managed user). Older versions
-- have no such options.
CREATE OR REPLACE FUNCTION pg_temp.dbward_grant_marker(username text, marker text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF pg_catalog.current_setting('server_version_num')::int >= 160000 THEN
    BEGIN
      EXECUTE pg_catalog.format('GRANT %I TO %I WITH INHERIT FALSE, SET FALSE', marker, username);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'admin user may not grant the marker role'
        USING ERRCODE = 'DWP02', DETAIL = marker;
    END;
  ELSE
    PERFORM pg_temp.dbward_grant(username, ARRAY[marker]);
  END IF;
END
$fn$;

-- Revokes `granted_role` from `grantee`. PostgreSQL 16+ records one grant per grantor and
-- REVOKE only removes the current user's, so grants made by others are named with GRANTED BY.
CREATE OR REPLACE FUNCTION pg_temp.dbward_revoke_one(granted_role text, grantee text,
                                                     grantor_name text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF pg_catalog.current_setting('server_version_num')::int >= 160000
     AND grantor_name IS NOT NULL AND grantor_name <> current_user THEN
    EXECUTE pg_catalog.format('REVOKE %I FROM %I GRANTED BY %I',
                              granted_role, grantee, grantor_name);
  ELSE
    EXECUTE pg_catalog.format('REVOKE %I FROM %I', granted_role, grantee);
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE EXCEPTION 'admin user may not revoke this role'
    USING ERRCODE = 'DWP02', DETAIL = granted_role;
END
$fn$;

-- Puts a managed user back to exactly what dbward made: login as `login` says; no SUPERUSER,
-- CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS; INHERIT; no connection limit; no password;
-- no expiry; no per-role or per-database settings; member of the marker role only, and no
-- role a member of it besides the admin. Whatever the user did to its own role while it
-- could log in is undone here.
--
-- ALTER ROLE cannot set VALID UNTIL back to NULL; 'infinity' (never expires) is the reset.
-- Only the attributes that differ are named: PostgreSQL refuses a CREATEROLE admin that
-- merely mentions SUPERUSER, REPLICATION or BYPASSRLS (and, from 16, CREATEDB unless it has
-- it). A user carrying an attribute the admin cannot remove is refused with DWU03, as is one
-- left with a membership the admin could not revoke: only a superuser can have caused
-- either, and such a user is not handed out again.
CREATE OR REPLACE FUNCTION pg_temp.dbward_clean_slate(username text, marker text, login boolean)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  u record;
  changes text := '';
  grant_row record;
  d name;
BEGIN
  SELECT oid, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,
         rolinherit, rolconnlimit, rolvaliduntil
    INTO STRICT u
    FROM pg_catalog.pg_roles WHERE rolname = username;
  PERFORM pg_temp.dbward_require_createrole();

  IF u.rolsuper THEN
    changes := changes || ' NOSUPERUSER';
  END IF;
  IF u.rolreplication THEN
    changes := changes || ' NOREPLICATION';
  END IF;
  IF u.rolbypassrls THEN
    changes := changes || ' NOBYPASSRLS';
  END IF;
  IF u.rolcreatedb THEN
    changes := changes || ' NOCREATEDB';
  END IF;
  IF u.rolcreaterole THEN
    changes := changes || ' NOCREATEROLE';
  END IF;
  IF NOT u.rolinherit THEN
    changes := changes || ' INHERIT';
  END IF;
  IF u.rolconnlimit <> -1 THEN
    changes := changes || ' CONNECTION LIMIT -1';
  END IF;
  IF u.rolvaliduntil IS NOT NULL AND u.rolvaliduntil <> 'infinity'::timestamptz THEN
    changes := changes || ' VALID UNTIL ''infinity''';
  END IF;
  BEGIN
    EXECUTE pg_catalog.format('ALTER ROLE %I %s PASSWORD NULL',
                              username, CASE WHEN login THEN 'LOGIN' ELSE 'NOLOGIN' END)
            || changes;
  EXCEPTION WHEN insufficient_privilege THEN
    -- CREATEROLE was checked above: what is refused is taking away an attribute that only
    -- its holders may change (SUPERUSER; REPLICATION and BYPASSRLS; CREATEDB from 16 on).
    RAISE EXCEPTION 'user has attributes the admin cannot remove'
      USING ERRCODE = 'DWU03', DETAIL = username;
  END;

  IF EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s
             WHERE s.setrole = u.oid AND s.setdatabase = 0) THEN
    EXECUTE pg_catalog.format('ALTER ROLE %I RESET ALL', username);
  END IF;
  FOR d IN SELECT db.datname FROM pg_catalog.pg_db_role_setting s
           JOIN pg_catalog.pg_database db ON db.oid = s.setdatabase
           WHERE s.setrole = u.oid LOOP
    EXECUTE pg_catalog.format('ALTER ROLE %I IN DATABASE %I RESET ALL', username, d);
  END LOOP;

  -- Roles the user is a member of, however it got them, except the marker. A role the admin
  -- holds WITH ADMIN OPTION and still cannot revoke was granted by someone whose grants only
  -- they can revoke (PostgreSQL 16+: a superuser or another role): refused below (DWU03), as
  -- no privilege of the admin would help. Other roles need ADMIN OPTION (DWP02 names it).
  FOR grant_row IN SELECT g.rolname::text AS role, gr.rolname::text AS grantor
                   FROM pg_catalog.pg_auth_members m
                   JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                   LEFT JOIN pg_catalog.pg_roles gr ON gr.oid = m.grantor
                   WHERE m.member = u.oid AND g.rolname <> marker LOOP
    BEGIN
      PERFORM pg_temp.dbward_revoke_one(grant_row.role, username, grant_row.grantor);
    EXCEPTION WHEN SQLSTATE 'DWP02' THEN
      IF NOT pg_catalog.pg_has_role(current_user, grant_row.role::name,
                                    'MEMBER WITH ADMIN OPTION') THEN
        RAISE;
      END IF;
    END;
  END LOOP;
  -- Roles the user made members of itself: they would inherit its next session's roles. The
  -- admin's own membership (PostgreSQL 16+ grants it to the creator) stays.
  FOR grant_row IN SELECT mem.rolname::text AS role, gr.rolname::text AS grantor
                   FROM pg_catalog.pg_auth_members m
                   JOIN pg_catalog.pg_roles mem ON mem.oid = m.member
                   LEFT JOIN pg_catalog.pg_roles gr ON gr.oid = m.grantor
                   WHERE m.roleid = u.oid AND mem.rolname <> current_user LOOP
    BEGIN
      PERFORM pg_temp.dbward_revoke_one(username, grant_row.role, grant_row.grantor);
    EXCEPTION WHEN SQLSTATE 'DWP02' THEN
      NULL;  -- granted by a superuser: refused below (DWU03)
    END;
  END LOOP;

  IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
             WHERE m.member = u.oid AND g.rolname <> marker)
     OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                JOIN pg_catalog.pg_roles mem ON mem.oid = m.member
                WHERE m.roleid = u.oid AND mem.rolname <> current_user) THEN
    RAISE EXCEPTION 'user keeps memberships the admin cannot revoke'
      USING ERRCODE = 'DWU03', DETAIL = username;
  END IF;
END
$fn$;

-- Creates the marker role when missing (another gateway may create it at the same moment)
-- and, from PostgreSQL 16 on, makes sure the admin holds it WITH ADMIN OPTION so that it can
-- grant it.
CREATE OR REPLACE FUNCTION pg_temp.dbward_ensure_marker(marker text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF NOT pg_temp.dbward_exists(marker) THEN
    BEGIN
      EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', marker);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
  IF pg_catalog.current_setting('server_version_num')::int >= 160000
     AND NOT pg_catalog.pg_has_role(current_user, marker::name, 'MEMBER WITH ADMIN OPTION') THEN
    BEGIN
      EXECUTE pg_catalog.format('GRANT %I TO %I WITH ADMIN OPTION', marker, current_user);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE EXCEPTION 'admin user may not grant the marker role'
        USING ERRCODE = 'DWP02', DETAIL = marker;
    END;
  END IF;
END
$fn$;

-- Activation, one transaction. `allowed` lists the predefined roles the db resource allows.
-- Returns 'created', 'reactivated' or 'already_active'.
CREATE OR REPLACE FUNCTION pg_temp.dbward_activate(username text, requested text[], marker text,
                                                   allowed text[])
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  held text[];
BEGIN
  IF username = marker OR username = current_user THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01';
  END IF;
  PERFORM pg_temp.dbward_check_requested(requested, marker, allowed);

  IF NOT pg_temp.dbward_exists(username) THEN
    PERFORM pg_temp.dbward_require_createrole();
    PERFORM pg_temp.dbward_ensure_marker(marker);
    -- The defaults, spelled out: what the clean slate restores.
    EXECUTE pg_catalog.format(
      'CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
      'INHERIT CONNECTION LIMIT -1 PASSWORD NULL', username);
    PERFORM pg_temp.dbward_grant_marker(username, marker);
    PERFORM pg_temp.dbward_grant(username, requested);
    RETURN 'created';
  END IF;

  IF NOT pg_temp.dbward_is_managed(username, marker) THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01';
  END IF;

  IF pg_temp.dbward_live_sessions(username) > 0 THEN
    held := pg_temp.dbward_held_roles(username, marker);
    -- Compare as sets: order and duplicates do not matter.
    IF held OPERATOR(pg_catalog.@>) requested AND requested OPERATOR(pg_catalog.@>) held THEN
      IF NOT (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = username) THEN
        PERFORM pg_temp.dbward_require_createrole();
        EXECUTE pg_catalog.format('ALTER ROLE %I LOGIN', username);
      END IF;
      RETURN 'already_active';
    END IF;
    RAISE EXCEPTION 'roles for user have changed' USING ERRCODE = 'DWU02';
  END IF;

  -- Idle: start from a clean slate, which also repairs a user left active by a crash.
  PERFORM pg_temp.dbward_clean_slate(username, marker, true);
  PERFORM pg_temp.dbward_grant(username, requested);
  RETURN 'reactivated';
END
$fn$;

-- First step of teardown: refuse new logins. Committed on its own so that the second step's
-- look at pg_stat_activity cannot miss a session that logged in meanwhile.
-- Returns 'missing', 'active' or 'disabled'.
CREATE OR REPLACE FUNCTION pg_temp.dbward_disable_login(username text, marker text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
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
  EXECUTE pg_catalog.format('ALTER ROLE %I NOLOGIN', username);
  RETURN 'disabled';
END
$fn$;

-- Second step of teardown, after dbward_disable_login committed. A session that slipped in
-- before login was disabled keeps the user usable: login is enabled again and nothing else
-- changes. Otherwise the user is dropped (drop_user) or, when that is refused because
-- objects depend on it, or when keeping, put back to a clean slate without login.
-- Returns 'missing', 'active', 'locked', 'dropped' or 'dependent' (locked instead of dropped).
CREATE OR REPLACE FUNCTION pg_temp.dbward_finish_teardown(username text, marker text, drop_user boolean)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
  IF NOT pg_temp.dbward_exists(username) THEN
    RETURN 'missing';
  END IF;
  IF username = marker OR NOT pg_temp.dbward_is_managed(username, marker) THEN
    RAISE EXCEPTION 'user is not managed by dbward' USING ERRCODE = 'DWU01';
  END IF;
  IF pg_temp.dbward_live_sessions(username) > 0 THEN
    EXECUTE pg_catalog.format('ALTER ROLE %I LOGIN', username);
    RETURN 'active';
  END IF;
  IF drop_user THEN
    BEGIN
      EXECUTE pg_catalog.format('DROP ROLE %I', username);
      RETURN 'dropped';
    EXCEPTION WHEN dependent_objects_still_exist THEN
      NULL;
    END;
  END IF;
  PERFORM pg_temp.dbward_clean_slate(username, marker, false);
  IF drop_user THEN
    RETURN 'dependent';
  END IF;
  RETURN 'locked';
END
$fn$;
