-- The requested roles ($1) that may never be granted to a provisioned user, each with the
-- reason and the role that makes it so (itself or one it is a member of); $2 is the marker
-- role, $3 the predefined roles (pg_*) the db resource allows.
--
-- A role is refused when it is, or is a member of (and so can SET ROLE to or inherit from),
-- any of: the admin user; the marker role; a user managed by dbward (member of the marker
-- without ADMIN OPTION); a dw-role-* role; a role with SUPERUSER, CREATEROLE, REPLICATION or
-- BYPASSRLS; a predefined pg_* role that no allowed predefined role includes; a role that
-- holds some role WITH ADMIN OPTION (the user could grant that role to anyone, and a grant it
-- made is not its own membership: no teardown undoes it, it outlives the user).
-- pg_database_owner is left out: its only member is the owner of the current database, and
-- granting that owner is judged by the owner role itself.
--
-- Used as is by the preflight and as the body of pg_temp.dbward_forbidden_roles: names
-- resolve in pg_catalog only, built-ins are schema-qualified.
SELECT req.rolname::text AS role, reason.text AS reason, reason.reached AS reached
FROM pg_catalog.pg_roles req
CROSS JOIN LATERAL (
  SELECT
    CASE WHEN x.oid = req.oid THEN 'it is '
         ELSE pg_catalog.format('it is a member of %I, ', x.rolname) END
    || CASE
         WHEN x.rolname = current_user THEN 'the admin user'
         WHEN x.rolname = $2::text THEN 'the role that marks the users dbward manages'
         WHEN pg_catalog.starts_with(x.rolname::text, 'dw-role-')
           THEN 'a role reserved for the users dbward creates (dw-role-*)'
         WHEN x.rolsuper THEN 'a superuser role'
         WHEN x.rolcreaterole THEN 'a role with CREATEROLE'
         WHEN x.rolreplication THEN 'a role with REPLICATION'
         WHEN x.rolbypassrls THEN 'a role with BYPASSRLS'
         WHEN pg_catalog.starts_with(x.rolname::text, 'pg_')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles a
                           WHERE a.rolname = ANY ($3::text[])
                             AND pg_catalog.pg_has_role(a.oid, x.oid, 'MEMBER'))
           THEN 'a PostgreSQL predefined role that the db resource does not allow'
         WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                      WHERE m.member = x.oid AND m.admin_option)
           THEN 'a role that may grant other roles (ADMIN OPTION)'
         ELSE 'a user managed by dbward'
       END AS text,
    x.rolname::text AS reached
  FROM pg_catalog.pg_roles x
  WHERE pg_catalog.pg_has_role(req.oid, x.oid, 'MEMBER')
    AND x.rolname <> 'pg_database_owner'
    AND (x.rolname = current_user
         OR x.rolname = $2::text
         OR x.rolsuper OR x.rolcreaterole OR x.rolreplication OR x.rolbypassrls
         OR pg_catalog.starts_with(x.rolname::text, 'dw-role-')
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                    WHERE m.member = x.oid AND m.admin_option)
         OR (pg_catalog.starts_with(x.rolname::text, 'pg_')
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles a
                             WHERE a.rolname = ANY ($3::text[])
                               AND pg_catalog.pg_has_role(a.oid, x.oid, 'MEMBER')))
         OR (EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                     JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                     WHERE m.member = x.oid AND g.rolname = $2::text AND NOT m.admin_option)
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                             WHERE m.member = x.oid AND g.rolname = $2::text AND m.admin_option)))
  ORDER BY x.oid = req.oid DESC, x.rolname
  LIMIT 1
) AS reason
WHERE req.rolname = ANY ($1::text[])
ORDER BY 1
