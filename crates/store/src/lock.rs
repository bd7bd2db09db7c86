//! Locks that hold across every gateway instance sharing the store (PROVISIONING §3: one
//! holder per (database, db user) while a user is activated or torn down).
//!
//! A lock is a lease row (key, holder, token, expiry) in the store. Taking it inserts the row
//! when it is absent or expired, so the lease of a holder that died is taken over once its
//! time runs out; while held, a background task renews it so a slow activation keeps it.
//! Within one process a tokio mutex per key queues the waiters first, so they do not poll the
//! store against each other; the row is still taken so other instances see it.

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
