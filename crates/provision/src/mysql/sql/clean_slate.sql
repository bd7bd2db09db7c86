-- The account exactly as dbward created it, whatever was done to it since: no password
-- (the native plugin with an empty authentication string, no alternative methods), the
-- certificate subject dbward set and nothing else required, no resource limits, the
-- default password policy. Login is locked or unlocked separately.
ALTER USER {account}
  IDENTIFIED VIA mysql_native_password USING ''
  REQUIRE SUBJECT {subject}
  WITH MAX_QUERIES_PER_HOUR 0 MAX_UPDATES_PER_HOUR 0 MAX_CONNECTIONS_PER_HOUR 0
       MAX_USER_CONNECTIONS 0 MAX_STATEMENT_TIME 0
  PASSWORD EXPIRE DEFAULT
