-- Managed users ($1 is the marker role: members without ADMIN OPTION, never the admin
-- itself) that can log in but have no backend anywhere in the cluster: candidates for the
-- reconciler, which re-checks each one under its lock.
SELECT u.rolname::text
FROM pg_catalog.pg_roles u
WHERE u.rolcanlogin
  AND u.rolname <> current_user
  AND EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
              JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
              WHERE m.member = u.oid AND g.rolname = $1::text AND NOT m.admin_option)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                  WHERE m.member = u.oid AND g.rolname = $1::text AND m.admin_option)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.usesysid = u.oid)
ORDER BY 1
