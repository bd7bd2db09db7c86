-- Cancel keys of live PostgreSQL sessions, so a CancelRequest that reaches another instance
-- than the one relaying the session is carried out all the same: the receiving instance marks
-- the key as requested, the instance named here finds the mark and sends the cancel.
--
-- key_hash: SHA-256 (hex) of the key the gateway issued to the client (process id and secret,
-- both big-endian); neither that key nor the database server's own is stored.
-- requested_unix_ms: when a cancel for the key was last asked for and not yet taken (database
-- clock).
CREATE TABLE cancel_keys (
    key_hash TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    sid TEXT NOT NULL,
    requested_unix_ms BIGINT
);
CREATE INDEX cancel_keys_instance ON cancel_keys (instance_id);
