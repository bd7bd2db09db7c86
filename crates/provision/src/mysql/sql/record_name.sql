-- Records which dbward user a managed user is for.
INSERT INTO {schema}.user_attributes (`User`, `Attributes`)
VALUES ({user}, JSON_OBJECT('user', {dbward_name}))
ON DUPLICATE KEY UPDATE `Attributes` = VALUES(`Attributes`)
