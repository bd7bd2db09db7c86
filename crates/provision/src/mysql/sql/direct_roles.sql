-- Roles granted directly to user@host (roles themselves have host '').
SELECT `Role` FROM mysql.roles_mapping WHERE `User` = {user} AND `Host` = {host} ORDER BY `Role`
