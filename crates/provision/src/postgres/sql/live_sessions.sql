-- Sessions of one user in every database of the cluster (see dbward_live_sessions).
SELECT pg_catalog.count(*)
FROM pg_catalog.pg_stat_activity a
JOIN pg_catalog.pg_roles u ON u.oid = a.usesysid
WHERE u.rolname = $1::text
