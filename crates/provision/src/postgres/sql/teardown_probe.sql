-- Before teardown: whether the user ($1) is managed (member of the marker role $2) and how
-- many sessions it has in the whole cluster. No row when the user does not exist.
SELECT
  EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
          JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
          WHERE m.member = u.oid AND g.rolname = $2::text) AS managed,
  (SELECT count(*) FROM pg_catalog.pg_stat_activity a WHERE a.usesysid = u.oid) AS live
FROM pg_catalog.pg_roles u
WHERE u.rolname = $1::text
