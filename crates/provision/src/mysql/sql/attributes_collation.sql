-- The collation of the `User` column of an existing user_attributes table.
SELECT COLLATION_NAME FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = {schema_name} AND TABLE_NAME = 'user_attributes' AND COLUMN_NAME = 'User'
