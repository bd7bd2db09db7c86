-- Why dbward must never grant the role {role} (no row: it may). Checked before anything is
-- created. Superuser-like powers are looked for in the role and every role granted to it,
-- however deep: SUPER; CREATE USER (alter any account, the admin's included); the global
-- grant option; FILE (read and write the server's files); SET USER (create routines that
-- run as any definer); and writing the grant tables (INSERT, UPDATE or DELETE on *.* or
-- on the `mysql` schema). Nor a role that holds another role WITH ADMIN OPTION, itself or
-- through a role granted to it: the user could grant that role to any account, and a grant
-- it made is not its own, so no teardown undoes it. Nor a role that may change the admin's
-- schema (write, create, alter, drop, index, trigger, grant, on the schema or on a table or
-- column in it): it holds `user_attributes`, dbward's record of whose each account
-- is, which the admin writes and trusts.
WITH RECURSIVE closure (role_name) AS (
  SELECT CAST({role} AS CHAR(128) CHARACTER SET utf8mb4)
  UNION
  SELECT m.`Role` FROM mysql.roles_mapping m JOIN closure c ON m.`User` = c.role_name
  WHERE m.`Host` = ''
)
SELECT reason FROM (
  SELECT 1 AS ord, 'it is the admin user' AS reason FROM DUAL WHERE {role} = {admin}
  UNION ALL
  SELECT 2, 'it is the role that marks the users dbward manages' FROM DUAL
  WHERE {role} = {marker}
  UNION ALL
  SELECT 3, 'it is the all-in-one role of a provisioned user' FROM DUAL
  WHERE LEFT({role}, CHAR_LENGTH({role_prefix})) = {role_prefix}
  UNION ALL
  SELECT 4, 'a database account has that name' FROM DUAL
  WHERE EXISTS (SELECT 1 FROM mysql.user WHERE `User` = {role} AND is_role <> 'Y')
  UNION ALL
  SELECT 5, CONCAT('it has superuser-like privileges (through role ', u.`User`, ')')
  FROM mysql.user u JOIN closure c ON u.`User` = c.role_name
  JOIN mysql.global_priv p ON p.`User` = u.`User` AND p.`Host` = u.`Host`
  WHERE u.is_role = 'Y' AND (
    u.Super_priv = 'Y' OR u.Create_user_priv = 'Y' OR u.Grant_priv = 'Y'
    OR u.File_priv = 'Y' OR u.Insert_priv = 'Y' OR u.Update_priv = 'Y'
    OR u.Delete_priv = 'Y'
    OR (CAST(IFNULL(JSON_VALUE(p.Priv, '$.access'), '0') AS UNSIGNED) & {set_user_bit}) <> 0)
  UNION ALL
  SELECT 6, CONCAT('it may write the grant tables (through role ', d.`User`, ')')
  FROM mysql.db d JOIN closure c ON d.`User` = c.role_name
  WHERE d.`Host` = '' AND 'mysql' LIKE d.`Db`
    AND (d.Insert_priv = 'Y' OR d.Update_priv = 'Y' OR d.Delete_priv = 'Y'
         OR d.Grant_priv = 'Y' OR d.Drop_priv = 'Y' OR d.Alter_priv = 'Y'
         OR d.Create_priv = 'Y')
  UNION ALL
  SELECT 7, CONCAT('it may grant role ', m.`Role`, ' to others (ADMIN OPTION, through role ',
                   m.`User`, ')')
  FROM mysql.roles_mapping m JOIN closure c ON m.`User` = c.role_name
  WHERE m.`Host` = '' AND m.Admin_option = 'Y'
  UNION ALL
  SELECT 8, CONCAT('it may change the schema ', CONVERT({schema} USING utf8mb4),
                   ' of the admin user (through role ', d.`User`, ')')
  FROM mysql.db d JOIN closure c ON d.`User` = c.role_name
  WHERE d.`Host` = '' AND {schema} LIKE d.`Db`
    AND (d.Insert_priv = 'Y' OR d.Update_priv = 'Y' OR d.Delete_priv = 'Y'
         OR d.Create_priv = 'Y' OR d.Drop_priv = 'Y' OR d.Alter_priv = 'Y'
         OR d.Index_priv = 'Y' OR d.Trigger_priv = 'Y' OR d.Grant_priv = 'Y')
  UNION ALL
  SELECT 8, CONCAT('it may change the schema ', CONVERT({schema} USING utf8mb4),
                   ' of the admin user (through role ', t.`User`, ')')
  FROM mysql.tables_priv t JOIN closure c ON t.`User` = c.role_name
  WHERE t.`Host` = '' AND t.`Db` = {schema}
    AND (FIND_IN_SET('Insert', t.Table_priv) OR FIND_IN_SET('Update', t.Table_priv)
         OR FIND_IN_SET('Delete', t.Table_priv) OR FIND_IN_SET('Create', t.Table_priv)
         OR FIND_IN_SET('Drop', t.Table_priv) OR FIND_IN_SET('Alter', t.Table_priv)
         OR FIND_IN_SET('Index', t.Table_priv) OR FIND_IN_SET('Trigger', t.Table_priv)
         OR FIND_IN_SET('Grant', t.Table_priv) OR FIND_IN_SET('Insert', t.Column_priv)
         OR FIND_IN_SET('Update', t.Column_priv))
) reasons
ORDER BY ord
LIMIT 1
