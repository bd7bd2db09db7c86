//! The sessions this gateway relays right now: for cancel requests, for ending sessions when
//! access is revoked, for the reconciler (a user with a live session here is not left over),
//! and for a graceful shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use dbward_proxy::pg::BackendKey;

use super::provisioning::DbUserKey;
use super::Authorized;
use crate::Gateway;

/// Where a PostgreSQL cancel request for one session must go.
#[derive(Clone)]
pub struct CancelTarget {
    pub addr: String,
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
    pub key: BackendKey,
}

impl CancelTarget {
    /// Asks the server to cancel whatever this session's backend runs, within `limit`.
    /// Delivered means read by the server, not that anything was cancelled.
    pub async fn send(&self, limit: Duration) -> Result<(), dbward_proxy::UpstreamError> {
        let sending =
            dbward_proxy::pg::cancel::send_cancel(self.addr.as_str(), self.tls.clone(), self.key);
        match tokio::time::timeout(limit, sending).await {
            Ok(sent) => sent,
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
    }
}

struct Entry {
    authorized: Arc<Authorized>,
    /// The database user the session runs as, on its server: sessions through two `db`
    /// resources that point at one server count together.
    db_user_key: DbUserKey,
    end: CancellationToken,
    cancel_key: Option<BackendKey>,
    /// False once the relay has ended and only teardown is left.
    relaying: bool,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    cancel: HashMap<BackendKey, CancelTarget>,
}

/// Live sessions by session id. Cheap to clone.
#[derive(Clone, Default)]
pub struct LiveSessions {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
    revalidate: Arc<tokio::sync::Notify>,
}

/// Removes the session from [`LiveSessions`] when dropped, however the session ends.
pub struct Registration {
    sessions: LiveSessions,
    sid: String,
    pub end: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        if let Some(entry) = inner.sessions.remove(&self.sid) {
            if let Some(key) = entry.cancel_key {
                inner.cancel.remove(&key);
            }
        }
        drop(inner);
        self.sessions.changed.notify_waiters();
    }
}

impl Registration {
    /// The relay has ended: the session no longer counts as a live user of its db user
    /// (teardown may proceed), but shutdown still waits for its teardown. Its cancel key, if
    /// it had one, is forgotten and returned (for the store to forget it too).
    pub fn relay_finished(&self) -> Option<BackendKey> {
        let mut inner = self.sessions.lock();
        let entry = inner.sessions.get_mut(&self.sid)?;
        entry.relaying = false;
        let key = entry.cancel_key.take()?;
        inner.cancel.remove(&key);
        Some(key)
    }
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(&self, authorized: Arc<Authorized>) -> Registration {
        let end = CancellationToken::new();
        let sid = authorized.fields.sid.clone();
        let db_user_key = DbUserKey::of(&authorized.db, &authorized.fields.db_user);
        self.lock().sessions.insert(
            sid.clone(),
            Entry {
                authorized,
                db_user_key,
                end: end.clone(),
                cancel_key: None,
                relaying: true,
            },
        );
        Registration {
            sessions: self.clone(),
            sid,
            end,
        }
    }

    /// Whether a session with this id is running (or being torn down) on this gateway.
    pub fn contains(&self, sid: &str) -> bool {
        self.lock().sessions.contains_key(sid)
    }

    /// Issues a gateway-side cancel key for a session and remembers the real one.
    pub fn add_cancel_key(&self, sid: &str, target: CancelTarget) -> BackendKey {
        let mut inner = self.lock();
        let key = loop {
            let key = dbward_proxy::pg::random_backend_key();
            if !inner.cancel.contains_key(&key) {
                break key;
            }
        };
        inner.cancel.insert(key, target);
        if let Some(entry) = inner.sessions.get_mut(sid) {
            entry.cancel_key = Some(key);
        }
        key
    }

    /// Forgets a session's cancel key (the store had it for another session already).
    pub fn remove_cancel_key(&self, sid: &str) {
        let mut inner = self.lock();
        if let Some(key) = inner
            .sessions
            .get_mut(sid)
            .and_then(|e| e.cancel_key.take())
        {
            inner.cancel.remove(&key);
        }
    }

    pub fn cancel_target(&self, key: BackendKey) -> Option<CancelTarget> {
        self.lock().cancel.get(&key).cloned()
    }

    /// The target of the cancel key with this stored hash (see [`super::cancel::key_hash`]).
    pub fn cancel_target_by_hash(&self, hash: &str) -> Option<CancelTarget> {
        self.lock()
            .cancel
            .iter()
            .find(|(key, _)| super::cancel::key_hash(**key) == hash)
            .map(|(_, target)| target.clone())
    }

    /// Whether any session of this gateway has a cancel key now.
    pub fn has_cancel_keys(&self) -> bool {
        !self.lock().cancel.is_empty()
    }

    /// How many sessions of this gateway run as this database user on its server, through
    /// any `db` resource.
    pub fn count_for(&self, key: &DbUserKey) -> usize {
        self.lock()
            .sessions
            .values()
            .filter(|e| e.relaying && e.db_user_key == *key)
            .count()
    }

    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the revocation watcher to check every session now (a user or role changed).
    pub fn revalidate_soon(&self) {
        self.revalidate.notify_one();
    }

    /// Asks every session to end (shutdown).
    pub fn end_all(&self) {
        for entry in self.lock().sessions.values() {
            entry.end.cancel();
        }
    }

    /// Waits until every session has finished its teardown, at most `limit`.
    pub async fn wait_until_empty(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if self.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(left = self.len(), "sessions still tearing down at shutdown");
                return;
            }
        }
    }

    fn snapshot(&self) -> Vec<(Arc<Authorized>, CancellationToken)> {
        self.lock()
            .sessions
            .values()
            .map(|e| (e.authorized.clone(), e.end.clone()))
            .collect()
    }
}

/// Ends sessions whose access was revoked: user deleted, role removed or changed, certificate
/// expired. Checks every two seconds against the store's current state.
pub async fn watch_revocations(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = gw.sessions.revalidate.notified() => {}
        }
        let sessions = gw.sessions.snapshot();
        if sessions.is_empty() {
            continue;
        }
        let resources = match gw.catalog.snapshot().await {
            Ok(resources) => resources,
            Err(err) => {
                tracing::warn!(%err, "revocation check skipped: store not readable");
                continue;
            }
        };
        for (authorized, end) in sessions {
            if end.is_cancelled() {
                continue;
            }
            if let Err(reason) = super::still_allowed(&resources, &authorized) {
                tracing::info!(
                    user = %authorized.fields.user,
                    sid = %authorized.fields.sid,
                    %reason,
                    "access revoked: ending session"
                );
                end.cancel();
            }
        }
    }
}
