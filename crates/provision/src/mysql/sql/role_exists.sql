-- 1 when the role exists, else 0.
SELECT COUNT(*) FROM mysql.user WHERE `User` = {role} AND is_role = 'Y'
