SELECT pg_temp.dbward_activate($1::text, $2::text[], $3::text, $4::text[])
