-- One database sessions may enter ($1), seen from the admin's own database: whether it
-- exists, whether the admin may connect to it, and which of the roles $2 (those that exist)
-- may not. has_database_privilege counts grants to PUBLIC and inherited ones.
SELECT
  d.oid IS NOT NULL AS database_exists,
  d.oid IS NOT NULL
    AND pg_catalog.has_database_privilege(d.oid, 'CONNECT') AS admin_connect,
  CASE WHEN d.oid IS NULL THEN '{}'::text[] ELSE
    coalesce((
      SELECT pg_catalog.array_agg(r.rolname::text ORDER BY r.rolname)
      FROM pg_catalog.pg_roles r
      WHERE r.rolname OPERATOR(pg_catalog.=) ANY ($2::text[])
        AND NOT pg_catalog.has_database_privilege(r.oid, d.oid, 'CONNECT')
    ), '{}'::text[])
  END AS roles_without_connect
FROM (SELECT $1::text AS name) AS wanted
LEFT JOIN pg_catalog.pg_database d ON d.datname OPERATOR(pg_catalog.=) wanted.name
