-- For each role name in $1: whether it exists and whether the admin holds it WITH ADMIN
-- OPTION (directly or through another role; a superuser admin holds every role so).
SELECT
  x.name AS name,
  r.oid IS NOT NULL AS role_exists,
  CASE WHEN r.oid IS NULL THEN false
       ELSE pg_catalog.pg_has_role(r.oid, 'MEMBER WITH ADMIN OPTION') END AS admin_option
FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS x(name, ord)
LEFT JOIN pg_catalog.pg_roles r ON r.rolname = x.name
ORDER BY x.ord
