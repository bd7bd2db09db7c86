SELECT pg_temp.dbward_finish_teardown($1::text, $2::text, $3::boolean)
