//! Warm admin connections, kept per (server, admin user, database), for every engine.
//!
//! Opening a TLS connection (and, on PostgreSQL, installing the helper functions) costs
//! several round trips; keeping a few connections open makes an activation one round trip.
//!
//! A warm connection keeps the session settings it started with (a fix made in the database
//! only reaches new sessions), so it must not live forever: connections older than the
//! pool's maximum lifetime are dropped on checkout and on return, and after a failed
//! operation the provisioner drops the connection and every idle one of the same key.
//!
//! At most as many connections per key as the pool keeps idle are in use at once
//! ([`Pool::permit`]); more operations wait for one. A burst of sessions (hundreds of people
//! connecting at once) then queues for warm connections instead of each opening its own,
//! which costs the database a backend start, a TLS handshake and, on PostgreSQL, installing
//! the helper functions, and left to itself slows every session of the burst many times over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AdminTarget;

/// What identifies interchangeable admin connections. Not the TLS configuration: a renewed
/// admin certificate is a new configuration, and a connection made with the previous one is
/// as good until it reaches the maximum lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    host: String,
    port: u16,
    server_name: String,
    admin_user: String,
    database: String,
}

impl PoolKey {
    pub(crate) fn of(target: &AdminTarget) -> Self {
        PoolKey {
            host: target.host.clone(),
            port: target.port,
            server_name: target.server_name.clone(),
            admin_user: target.admin_user.clone(),
            database: target.database.clone(),
        }
    }
}

/// An open admin connection as the pool sees it.
pub(crate) trait PooledConn {
    /// When the connection was opened.
    fn opened_at(&self) -> Instant;
    /// True when the server or the network closed it.
    fn is_closed(&self) -> bool {
        false
    }
    /// Keeps (or, with `None`, releases) the permit of a connection in use, for engines whose
    /// operations hold a connection outside [`Pool`]'s sight.
    fn hold_permit(&mut self, _permit: Option<OwnedSemaphorePermit>) {}
}

/// Idle connections by key.
pub(crate) struct Pool<C> {
    idle: Mutex<HashMap<PoolKey, Vec<C>>>,
    /// Connections in use per key: as many permits as `max_idle_per_key`.
    in_use: Mutex<HashMap<PoolKey, Arc<Semaphore>>>,
    max_idle_per_key: usize,
    max_lifetime: Duration,
}

impl<C: PooledConn> Pool<C> {
    pub(crate) fn new(max_idle_per_key: usize, max_lifetime: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            in_use: Mutex::new(HashMap::new()),
            max_idle_per_key: max_idle_per_key.max(1),
            max_lifetime,
        }
    }

    /// Waits, at most `wait`, until a connection of `key` may be used: fewer than
    /// `max_idle_per_key` are in use. Held for as long as the operation uses its connection;
    /// `None` when the wait ran out.
    pub(crate) async fn permit(
        &self,
        key: &PoolKey,
        wait: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let semaphore = self
            .in_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_idle_per_key)))
            .clone();
        tokio::time::timeout(wait, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<C>>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn usable(&self, conn: &C) -> bool {
        !conn.is_closed() && conn.opened_at().elapsed() < self.max_lifetime
    }

    /// An idle connection that is still open and younger than the maximum lifetime, if any;
    /// the others are discarded.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<C> {
        let mut idle = self.lock();
        let conns = idle.get_mut(key)?;
        while let Some(conn) = conns.pop() {
            if self.usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Drops every idle connection of `key` (their session state may be stale).
    pub(crate) fn discard(&self, key: &PoolKey) {
        self.lock().remove(key);
    }

    /// Returns a connection after a successful use; closed, too old or surplus ones are
    /// dropped.
    pub(crate) fn put(&self, key: PoolKey, mut conn: C) {
        conn.hold_permit(None);
        if !self.usable(&conn) {
            return;
        }
        let mut idle = self.lock();
        let conns = idle.entry(key).or_default();
        if conns.len() < self.max_idle_per_key {
            conns.push(conn);
        }
    }

    /// After an operation: a connection that succeeded goes back to the pool; after a
    /// failure it is dropped together with every idle connection of `key`, whose session
    /// state may share the cause.
    pub(crate) fn finish<T, E>(
        &self,
        key: PoolKey,
        conn: C,
        outcome: Result<T, E>,
    ) -> Result<T, E> {
        if outcome.is_ok() {
            self.put(key, conn);
        } else {
            drop(conn);
            self.discard(&key);
        }
        outcome
    }

    /// Number of idle connections kept for `key`.
    #[cfg(feature = "test-support")]
    pub(crate) fn idle_count(&self, key: &PoolKey) -> usize {
        self.lock().get(key).map_or(0, Vec::len)
    }
}
