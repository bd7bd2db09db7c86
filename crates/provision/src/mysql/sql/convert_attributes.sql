-- Migrates a table created by earlier versions in the schema's default character set
-- (often latin1, which cannot hold most names).
ALTER TABLE {schema}.user_attributes CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
