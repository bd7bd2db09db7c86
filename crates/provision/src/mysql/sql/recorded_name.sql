-- The dbward name recorded for a managed user.
SELECT JSON_VALUE(`Attributes`, '$.user') FROM {schema}.user_attributes WHERE `User` = {user}
