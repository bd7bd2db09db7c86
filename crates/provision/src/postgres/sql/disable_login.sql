SELECT pg_temp.dbward_disable_login($1::text, $2::text)
