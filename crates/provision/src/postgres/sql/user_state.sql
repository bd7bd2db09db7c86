-- One user: whether dbward manages it ($2 is the marker role), whether it can log in, and
-- the roles it holds directly besides the marker. No row when the user does not exist.
SELECT
  EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
          JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
          WHERE m.member = u.oid AND g.rolname = $2::text) AS managed,
  u.rolcanlogin AS can_login,
  ARRAY(SELECT DISTINCT g.rolname::text
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
        WHERE m.member = u.oid AND g.rolname <> $2::text) AS roles
FROM pg_catalog.pg_roles u
WHERE u.rolname = $1::text
