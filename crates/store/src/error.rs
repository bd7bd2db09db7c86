//! The one error type of the store crate.
//!
//! Messages name the resource, lock key or file involved, never a stored value (CA keys and
//! password hashes pass through this crate).

use std::path::PathBuf;

/// Everything that can go wrong reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite backend failed (I/O, lock contention past the busy timeout, bad SQL).
    #[error("sqlite store: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// A create-only write found a resource of that kind and name already stored.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: String, name: String },

    /// The lock was still held by another holder when the wait ran out.
    #[error("timed out waiting for lock \"{key}\"")]
    LockTimeout { key: String },

    /// Creating or securing the data directory or the database file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A blocking store call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),

    /// The stored data is not what this version of dbward can work with (for example a schema
    /// written by a newer version).
    #[error("store is corrupt or from a newer version: {0}")]
    Corrupt(String),
}

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
