-- Privileges of the account grantee ('user'@'host') on the schema schema.
SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES
WHERE GRANTEE = {grantee} AND TABLE_SCHEMA = {schema}
