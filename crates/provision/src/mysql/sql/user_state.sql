-- The account user@'%': whether it is locked (no row: it does not exist), and whether it
-- is managed: a member of the marker role without ADMIN OPTION (whoever created
-- the marker, the admin, holds it with ADMIN OPTION, and is not a user dbward created).
SELECT IFNULL(JSON_VALUE(p.`Priv`, '$.account_locked'), 'false'),
       (SELECT COUNT(*) FROM mysql.roles_mapping m
        WHERE m.`User` = p.`User` AND m.`Host` = '%' AND m.`Role` = {marker}
          AND m.`Admin_option` = 'N')
FROM mysql.global_priv p WHERE p.`User` = {user} AND p.`Host` = '%'
