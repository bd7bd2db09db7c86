//! Locks that hold across every gateway instance sharing the store (PROVISIONING §3: one
//! holder per (database, db user) while a user is activated or torn down).
//!
//! A lock is a lease row (key, holder, token, expiry) in the store. Taking it inserts the row
//! when it is absent or expired, so the lease of a holder that died is taken over once its
//! time runs out; while held, a background task renews it so a slow activation keeps it.
//! Within one process a tokio mutex per key queues the waiters first, so they do not poll the
//! store against each other; the row is still taken so other instances see it.
//!
//! # Other backends
//!
//! Everything here (waiting with backoff, renewal, loss detection, the local queue) is written
//! against the three lease calls of [`Backend`]: `try_acquire_lease`, `renew_lease` and
//! `release_lease`. A PostgreSQL backend shared by several gateways provides them with one
//! statement each on a `lock_leases` table like SQLite's, with expiry taken from the
//! database clock (`now()`) so instances agree on it even if their clocks drift:
//!
//! ```sql
//! -- try_acquire_lease: taken when one row was written
//! INSERT INTO lock_leases (lock_key, holder, token, expires_at)
//! VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
//! ON CONFLICT (lock_key) DO UPDATE
//!     SET holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at
//!     WHERE lock_leases.expires_at <= now();
//! -- renew_lease / release_lease: still ours when one row was touched
//! UPDATE lock_leases SET expires_at = now() + $3 * interval '1 millisecond'
//!     WHERE lock_key = $1 AND token = $2;
//! DELETE FROM lock_leases WHERE lock_key = $1 AND token = $2;
//! ```
//!
//! `ON CONFLICT DO UPDATE ... WHERE` locks the conflicting row and re-checks the condition, so
//! under READ COMMITTED two instances can never both take the same key. Session-level advisory
//! locks are deliberately not used: they belong to one pooled connection, vanish silently when
//! it drops, and cannot be inspected or taken over by expiry. So a PostgreSQL backend plugs in
//! through [`crate::Store::from_backend`] and no caller of [`crate::Store::lock`] changes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::error::{Result, StoreError};

/// First pause between two attempts on a lease held elsewhere; doubled up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Lower bound of the renewal period, for very short ttls.
const MIN_RENEWAL_PERIOD: Duration = Duration::from_millis(10);

type KeySlot = Arc<tokio::sync::Mutex<()>>;

/// The in-process queue of one store handle (and its clones): one async mutex per key.
#[derive(Default)]
pub(crate) struct LocalLocks {
    slots: Mutex<HashMap<String, KeySlot>>,
}

impl LocalLocks {
    fn slot(&self, key: &str) -> KeySlot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// Drops the key's mutex when no one else holds or awaits it, so keys of past sessions
    /// do not accumulate. The caller holds one reference (`slot`), the map another.
    fn forget_if_unused(&self, key: &str, slot: &KeySlot) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // New waiters clone the slot under the map's mutex, held here, so the count cannot
        // grow between this check and the removal.
        if Arc::strong_count(slot) == 2 {
            slots.remove(key);
        }
    }
}

/// This process's place at the head of a key's local queue.
struct LocalTurn {
    guard: Option<OwnedMutexGuard<()>>,
    slot: KeySlot,
    key: String,
    locals: Arc<LocalLocks>,
}

impl Drop for LocalTurn {
    fn drop(&mut self) {
        self.guard.take();
        self.locals.forget_if_unused(&self.key, &self.slot);
    }
}

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases best-effort in the
/// background.
pub struct LockGuard {
    held: Option<HeldLease>,
    key: String,
    lost: Arc<AtomicBool>,
}

struct HeldLease {
    backend: Arc<dyn Backend>,
    token: String,
    renewal: JoinHandle<()>,
    // Dropped only after the row is gone, so local waiters find the lease free.
    turn: LocalTurn,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("held", &self.held.is_some())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LockGuard {
    /// The locked key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// True when renewing failed because another holder took the lease over (this process
    /// stalled for longer than the ttl). Work under the lock is then no longer exclusive.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Gives the lock up: deletes the lease row if it is still ours, then lets the next local
    /// waiter in.
    pub async fn release(mut self) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        held.renewal.abort();
        let backend = held.backend.clone();
        let (key, token) = (self.key.clone(), held.token.clone());
        let released =
            tokio::task::spawn_blocking(move || backend.release_lease(&key, &token)).await??;
        if !released {
            tracing::warn!(key = %self.key, "lock lease was taken over before release");
        }
        drop(held);
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        held.renewal.abort();
        let key = std::mem::take(&mut self.key);
        let release = move || {
            if let Err(error) = held.backend.release_lease(&key, &held.token) {
                // The lease expires on its own after its ttl.
                tracing::warn!(%key, %error, "releasing a dropped lock failed");
            }
            drop(held.turn);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

/// Takes the lock on `key` for `holder`, waiting at most `wait`; see [`crate::Store::lock`].
pub(crate) async fn acquire(
    backend: Arc<dyn Backend>,
    locals: Arc<LocalLocks>,
    key: &str,
    holder: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<LockGuard> {
    let deadline = Instant::now() + wait;
    let timeout = || StoreError::LockTimeout {
        key: key.to_owned(),
    };

    let slot = locals.slot(key);
    let mut turn = LocalTurn {
        guard: None,
        slot: slot.clone(),
        key: key.to_owned(),
        locals,
    };
    drop(slot);
    // `timeout_at` polls the mutex once before looking at the deadline, so a zero wait still
    // takes a free lock.
    let local = tokio::time::timeout_at(deadline, turn.slot.clone().lock_owned())
        .await
        .map_err(|_| timeout())?;
    turn.guard = Some(local);

    let token = uuid::Uuid::new_v4().to_string();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let attempt_backend = backend.clone();
        let (attempt_key, attempt_holder, attempt_token) =
            (key.to_owned(), holder.to_owned(), token.clone());
        let taken = tokio::task::spawn_blocking(move || {
            attempt_backend.try_acquire_lease(&attempt_key, &attempt_holder, &attempt_token, ttl)
        })
        .await??;
        if taken {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timeout());
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }

    let lost = Arc::new(AtomicBool::new(false));
    let renewal = tokio::spawn(renew_until_released(
        backend.clone(),
        key.to_owned(),
        token.clone(),
        ttl,
        lost.clone(),
    ));
    Ok(LockGuard {
        held: Some(HeldLease {
            backend,
            token,
            renewal,
            turn,
        }),
        key: key.to_owned(),
        lost,
    })
}

/// Extends the lease every third of its ttl until aborted by release, or until the lease turns
/// out to be lost.
async fn renew_until_released(
    backend: Arc<dyn Backend>,
    key: String,
    token: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let period = (ttl / 3).max(MIN_RENEWAL_PERIOD);
    loop {
        tokio::time::sleep(period).await;
        let renew_backend = backend.clone();
        let (renew_key, renew_token) = (key.clone(), token.clone());
        let renewed = tokio::task::spawn_blocking(move || {
            renew_backend.renew_lease(&renew_key, &renew_token, ttl)
        })
        .await;
        match renewed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                lost.store(true, Ordering::Relaxed);
                tracing::warn!(%key, "lock lease was taken over while held");
                return;
            }
            // A failed renewal is retried next period; the lease survives one miss.
            Ok(Err(error)) => tracing::warn!(%key, %error, "renewing lock lease failed"),
            Err(error) => {
                tracing::warn!(%key, %error, "lock lease renewal stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ActivationRecord, AuditQuery, PutMode, SessionRecord};
    use crate::{SqliteBackend, Store};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// A backend whose lease renewals can be made to fail, as when a gateway stalls.
    struct Stalling {
        inner: Arc<SqliteBackend>,
        stalled: AtomicBool,
    }

    impl Backend for Stalling {
        fn put_resource(&self, kind: &str, name: &str, body: &str, mode: PutMode) -> Result<()> {
            self.inner.put_resource(kind, name, body, mode)
        }
        fn get_resource(&self, kind: &str, name: &str) -> Result<Option<String>> {
            self.inner.get_resource(kind, name)
        }
        fn list_resources(&self, kind: &str) -> Result<Vec<(String, String)>> {
            self.inner.list_resources(kind)
        }
        fn delete_resource(&self, kind: &str, name: &str) -> Result<bool> {
            self.inner.delete_resource(kind, name)
        }
        fn resources_revision(&self) -> Result<i64> {
            self.inner.resources_revision()
        }
        fn get_cas(&self) -> Result<Vec<(String, String, String)>> {
            self.inner.get_cas()
        }
        fn put_ca_if_absent(&self, kind: &str, cert_pem: &str, key_pem: &str) -> Result<bool> {
            self.inner.put_ca_if_absent(kind, cert_pem, key_pem)
        }
        fn set_password_hash(&self, user: &str, phc: &str) -> Result<()> {
            self.inner.set_password_hash(user, phc)
        }
        fn get_password_hash(&self, user: &str) -> Result<Option<String>> {
            self.inner.get_password_hash(user)
        }
        fn delete_password(&self, user: &str) -> Result<bool> {
            self.inner.delete_password(user)
        }
        fn try_acquire_lease(
            &self,
            key: &str,
            holder: &str,
            token: &str,
            ttl: Duration,
        ) -> Result<bool> {
            self.inner.try_acquire_lease(key, holder, token, ttl)
        }
        fn renew_lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
            if self.stalled.load(Ordering::SeqCst) {
                return Err(StoreError::Corrupt("stalled".into()));
            }
            self.inner.renew_lease(key, token, ttl)
        }
        fn release_lease(&self, key: &str, token: &str) -> Result<bool> {
            self.inner.release_lease(key, token)
        }
        fn append_audit(&self, body: &str, event: &str, user: &str, time: i64) -> Result<()> {
            self.inner.append_audit(body, event, user, time)
        }
        fn search_audit(&self, query: &AuditQuery) -> Result<Vec<String>> {
            self.inner.search_audit(query)
        }
        fn register_session(&self, session: &SessionRecord) -> Result<()> {
            self.inner.register_session(session)
        }
        fn end_session(&self, sid: &str) -> Result<bool> {
            self.inner.end_session(sid)
        }
        fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
            self.inner.list_sessions()
        }
        fn end_sessions_of_instance(&self, instance_id: &str) -> Result<usize> {
            self.inner.end_sessions_of_instance(instance_id)
        }
        fn heartbeat_instance(&self, instance_id: &str) -> Result<()> {
            self.inner.heartbeat_instance(instance_id)
        }
        fn live_instances(&self, since_unix_ms: i64) -> Result<Vec<String>> {
            self.inner.live_instances(since_unix_ms)
        }
        fn now_unix_ms(&self) -> Result<i64> {
            self.inner.now_unix_ms()
        }
        fn put_activation(&self, record: &ActivationRecord) -> Result<()> {
            self.inner.put_activation(record)
        }
        fn get_activation(&self, user_key: &str) -> Result<Option<ActivationRecord>> {
            self.inner.get_activation(user_key)
        }
        fn delete_activation(&self, user_key: &str) -> Result<bool> {
            self.inner.delete_activation(user_key)
        }
        fn kv_get(&self, key: &str) -> Result<Option<String>> {
            self.inner.kv_get(key)
        }
        fn kv_put(&self, key: &str, value: &str) -> Result<()> {
            self.inner.kv_put(key, value)
        }
        fn kv_delete(&self, key: &str) -> Result<bool> {
            self.inner.kv_delete(key)
        }
    }

    /// Two gateway instances sharing one store: separate handles (so separate local queues)
    /// over the same database file.
    fn two_instances(
    ) -> std::result::Result<(tempfile::TempDir, Store, Store), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = Store::open_sqlite(dir.path())?;
        let second = Store::open_sqlite(dir.path())?;
        Ok((dir, first, second))
    }

    const KEY: &str = "provision/orders/alice";

    #[tokio::test]
    async fn second_acquirer_waits_until_release() -> TestResult {
        let (_dir, first, second) = two_instances()?;
        for other in [first.clone(), second] {
            let held = first.lock(KEY, "gw1", Duration::from_secs(1)).await?;
            let waiter =
                tokio::spawn(async move { other.lock(KEY, "gw2", Duration::from_secs(10)).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !waiter.is_finished(),
                "second holder got the lock while it was held"
            );
            held.release().await?;
            let next = tokio::time::timeout(Duration::from_secs(5), waiter).await???;
            assert_eq!(next.key(), KEY);
            next.release().await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn waiting_too_long_times_out_with_the_key() -> TestResult {
        let (_dir, first, second) = two_instances()?;
        let held = first.lock(KEY, "gw1", Duration::from_secs(1)).await?;
        for other in [&first, &second] {
            let started = Instant::now();
            let err = other
                .lock(KEY, "gw2", Duration::from_millis(200))
                .await
                .err();
            assert!(
                matches!(&err, Some(StoreError::LockTimeout { key }) if key == KEY),
                "{err:?}"
            );
            assert!(started.elapsed() >= Duration::from_millis(200));
        }
        // Other keys are independent.
        second
            .lock("provision/orders/bob", "gw2", Duration::ZERO)
            .await?
            .release()
            .await?;
        held.release().await?;
        Ok(())
    }

    #[tokio::test]
    async fn dropped_guard_releases_the_lock() -> TestResult {
        let (_dir, first, second) = two_instances()?;
        drop(first.lock(KEY, "gw1", Duration::from_secs(1)).await?);
        second
            .lock(KEY, "gw2", Duration::from_secs(5))
            .await?
            .release()
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn lease_of_a_dead_holder_is_taken_over_after_it_expires() -> TestResult {
        let (_dir, store, _) = two_instances()?;
        // A holder that took the lease and died: nobody renews or releases it.
        let ttl = Duration::from_millis(400);
        assert!(store
            .backend()
            .try_acquire_lease(KEY, "dead", "token", ttl)?);
        let started = Instant::now();
        let early = store
            .lock(KEY, "gw2", Duration::from_millis(100))
            .await
            .err();
        assert!(
            matches!(early, Some(StoreError::LockTimeout { .. })),
            "{early:?}"
        );
        let taken = store.lock(KEY, "gw2", Duration::from_secs(5)).await?;
        assert!(started.elapsed() >= ttl);
        // The dead holder's token no longer counts.
        assert!(!store.backend().renew_lease(KEY, "token", ttl)?);
        taken.release().await?;
        Ok(())
    }

    #[tokio::test]
    async fn held_lease_is_renewed_past_its_ttl() -> TestResult {
        let (_dir, first, second) = two_instances()?;
        let ttl = Duration::from_millis(150);
        let held = first
            .lock_with_ttl(KEY, "gw1", ttl, Duration::from_secs(1))
            .await?;
        let err = second.lock(KEY, "gw2", ttl * 4).await.err();
        assert!(
            matches!(err, Some(StoreError::LockTimeout { .. })),
            "{err:?}"
        );
        assert!(!held.is_lost());
        held.release().await?;
        Ok(())
    }

    #[tokio::test]
    async fn lease_taken_over_from_a_stalled_holder_is_reported_lost() -> TestResult {
        let dir = tempfile::tempdir()?;
        let shared = Arc::new(SqliteBackend::open(dir.path())?);
        let stalling = Arc::new(Stalling {
            inner: shared.clone(),
            stalled: AtomicBool::new(false),
        });
        let slow = Store::from_backend(stalling.clone());
        let other = Store::from_backend(shared);

        let ttl = Duration::from_millis(150);
        let held = slow
            .lock_with_ttl(KEY, "gw1", ttl, Duration::from_secs(1))
            .await?;
        stalling.stalled.store(true, Ordering::SeqCst);
        let taken = other
            .lock_with_ttl(KEY, "gw2", ttl, Duration::from_secs(5))
            .await?;
        stalling.stalled.store(false, Ordering::SeqCst);

        let deadline = Instant::now() + Duration::from_secs(5);
        while !held.is_lost() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(held.is_lost());
        // Releasing the lost lock leaves the new holder's lease alone.
        held.release().await?;
        let err = slow
            .lock(KEY, "gw3", Duration::from_millis(100))
            .await
            .err();
        assert!(
            matches!(err, Some(StoreError::LockTimeout { .. })),
            "{err:?}"
        );
        assert!(!taken.is_lost());
        taken.release().await?;
        Ok(())
    }
}
