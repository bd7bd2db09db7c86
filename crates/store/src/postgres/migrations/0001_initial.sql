-- Initial schema of the dbward store on PostgreSQL: the SQLite schema table for table, except
-- that lease expiry is a `timestamptz` compared with the database clock and audit rows are
-- numbered by a BIGSERIAL.

-- Resources (roles, users, dbs, import rules) as JSON text, keyed by (kind, name).
CREATE TABLE resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);

-- One row: a counter bumped in the same transaction as every resource write.
CREATE TABLE resources_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO resources_revision (id, revision) VALUES (1, 0);

-- Certificate authorities: one row per CA kind. First writer wins.
CREATE TABLE cert_authorities (
    kind TEXT PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL
);

-- Password hashes as PHC strings (Argon2id), per dbward user.
CREATE TABLE password_hashes (
    user_name TEXT PRIMARY KEY,
    phc TEXT NOT NULL
);

-- Leases behind the provisioning lock: one row per held key, expiring by the database clock.
CREATE TABLE lock_leases (
    lock_key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Audit events as JSON text, with the columns that searches filter on.
CREATE TABLE audit_events (
    id BIGSERIAL PRIMARY KEY,
    time_unix_ms BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    user_name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (time_unix_ms);
CREATE INDEX audit_events_type ON audit_events (event_type);
CREATE INDEX audit_events_user ON audit_events (user_name);

-- Gateway instances and when each last said it was alive (database clock).
CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    last_seen_unix_ms BIGINT NOT NULL
);

-- Live database sessions, per gateway instance.
CREATE TABLE live_sessions (
    sid TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    db_service TEXT NOT NULL,
    db_user TEXT NOT NULL,
    dbward_user TEXT NOT NULL,
    mode TEXT NOT NULL,
    started_unix_ms BIGINT NOT NULL
);
CREATE INDEX live_sessions_instance ON live_sessions (instance_id);

-- Small values that need no table of their own.
CREATE TABLE kv (
    kv_key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
