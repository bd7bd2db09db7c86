-- The record of each managed user's dbward name. utf8mb4 with a binary collation: names
-- are any Unicode text, and two names that differ in case or accents are two users.
CREATE TABLE IF NOT EXISTS {schema}.user_attributes (
  `User` VARCHAR(80) NOT NULL PRIMARY KEY,
  `Attributes` JSON NOT NULL
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
