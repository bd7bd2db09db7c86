-- One user: whether dbward manages it ($2 is the marker role: a member without ADMIN OPTION,
-- never the admin itself), whether it can log in, and the roles it holds directly besides
-- the marker. No row when the user does not exist.
SELECT
  u.rolname <> current_user
    AND EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                WHERE m.member = u.oid AND g.rolname = $2::text AND NOT m.admin_option)
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                    JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                    WHERE m.member = u.oid AND g.rolname = $2::text AND m.admin_option)
    AS managed,
  u.rolcanlogin AS can_login,
  ARRAY(SELECT DISTINCT g.rolname::text
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
        WHERE m.member = u.oid AND g.rolname <> $2::text) AS roles
FROM pg_catalog.pg_roles u
WHERE u.rolname = $1::text
