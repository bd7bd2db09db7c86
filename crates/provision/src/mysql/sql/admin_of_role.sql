-- 1 when the admin holds the role WITH ADMIN OPTION (may grant it), else 0.
SELECT COUNT(*) FROM mysql.roles_mapping
WHERE `User` = {admin} AND `Role` = {role} AND `Admin_option` = 'Y'
