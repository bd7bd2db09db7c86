-- What the admin user can do in the database it is connected to.
SELECT
  current_user::text AS admin,
  pg_catalog.current_database()::text AS database,
  r.rolsuper AS superuser,
  r.rolcreaterole AS createrole,
  pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CONNECT') AS can_connect,
  pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY') AS can_temp,
  pg_catalog.pg_is_in_recovery() AS in_recovery,
  pg_catalog.current_setting('default_transaction_read_only') = 'on' AS read_only_default,
  pg_catalog.current_setting('server_version_num')::int AS version_num
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user
