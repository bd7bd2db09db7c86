-- Managed users (members of the marker role without ADMIN OPTION) that are
-- unlocked and have no live session: what a crash leaves behind.
SELECT m.`User` FROM mysql.roles_mapping m
JOIN mysql.global_priv p ON p.`User` = m.`User` AND p.`Host` = m.`Host`
WHERE m.`Role` = {marker} AND m.`Host` = '%' AND m.`Admin_option` <> 'Y'
  AND IFNULL(JSON_VALUE(p.`Priv`, '$.account_locked'), 'false') IN ('false', '0')
  AND NOT EXISTS (SELECT 1 FROM information_schema.processlist l WHERE l.`USER` = m.`User`)
ORDER BY 1
