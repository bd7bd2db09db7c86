-- Managed users ($1 is the marker role) that can log in but have no backend anywhere in the
-- cluster: candidates for the reconciler, which re-checks each one under its lock.
SELECT u.rolname::text
FROM pg_catalog.pg_roles u
JOIN pg_catalog.pg_auth_members m ON m.member = u.oid
JOIN pg_catalog.pg_roles g ON g.oid = m.roleid AND g.rolname = $1::text
WHERE u.rolcanlogin
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.usename = u.rolname)
ORDER BY 1
