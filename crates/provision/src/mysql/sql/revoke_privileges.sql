-- Every privilege held directly (global, schema, table, column, routine), with the grant
-- option: a managed user and its all-in-one role hold privileges only through db roles.
REVOKE ALL PRIVILEGES, GRANT OPTION FROM {grantee}
