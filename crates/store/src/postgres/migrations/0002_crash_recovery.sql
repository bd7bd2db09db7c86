-- What a surviving or restarted gateway needs to clean up after a crashed one.
--
-- live_sessions: which server and which upstream connection each live session uses, so that
-- a session whose gateway died can be ended in the database (PostgreSQL backend pid, MariaDB
-- connection id).
ALTER TABLE live_sessions ADD COLUMN engine TEXT NOT NULL DEFAULT '';
ALTER TABLE live_sessions ADD COLUMN server TEXT NOT NULL DEFAULT '';
ALTER TABLE live_sessions ADD COLUMN backend_id BIGINT;

-- The activation that made a database user active, per (engine, server host:port, db user):
-- its provisioning mode is the one a later teardown or the reconciler applies.
CREATE TABLE activations (
    user_key TEXT PRIMARY KEY,
    db_service TEXT NOT NULL,
    dbward_user TEXT NOT NULL,
    mode TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    updated_unix_ms BIGINT NOT NULL
);
