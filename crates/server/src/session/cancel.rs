//! PostgreSQL cancel requests across gateway instances sharing one store (DESIGN §8).
//!
//! A CancelRequest carries no authentication and arrives on a connection of its own, which a
//! load balancer may hand to any instance. Every instance knows the keys of the sessions it
//! relays (`live`); with a shared store (`storage.backend: postgres`) it also records each
//! key there, as a SHA-256 hash of the key the client was given, with its own instance id.
//! Neither the client's key nor the database server's is stored.
//!
//! An instance that receives a key it does not know marks the stored key as requested; a key
//! no instance recorded marks nothing and the request is dropped, as on one instance. Every
//! instance with live cancel keys takes the marks addressed to it every
//! [`POLL_EVERY`] and sends the cancel to its session's server, exactly as for a request it
//! received itself; a mark older than [`REQUEST_MAX_AGE`] is dropped, so a request delayed by
//! a store outage does not cancel a later statement. The key is forgotten in the store when
//! the session's relay ends, and the keys of an instance without heartbeat are forgotten by
//! the others; a key whose removal failed matches no live session on its instance and marking
//! it has no effect.

use std::sync::Arc;
use std::time::Duration;

use dbward_model::StorageBackend;
use dbward_proxy::pg::BackendKey;
use tokio_util::sync::CancellationToken;

use super::live::CancelTarget;
use crate::Gateway;

/// How often an instance with live cancel keys looks for cancel requests other instances
/// passed on to it.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// A cancel request passed on through the store older than this is dropped.
pub const REQUEST_MAX_AGE: Duration = Duration::from_secs(10);
/// How long one store call for a cancel key may take.
const STORE_WAIT: Duration = Duration::from_secs(5);
/// How long forwarding a cancel request to the database server may take.
pub(crate) const CANCEL_FORWARD_WAIT: Duration = Duration::from_secs(10);

/// Whether other instances may share this one's store, and so receive its sessions' cancel
/// requests.
pub(crate) fn shared_store(gw: &Gateway) -> bool {
    gw.config.storage.backend == StorageBackend::Postgres
}

/// The stored form of a client's cancel key: SHA-256 of process id and secret (big-endian),
/// in lowercase hex.
pub fn key_hash(key: BackendKey) -> String {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&key.process_id.to_be_bytes());
    bytes[4..].copy_from_slice(&key.secret_key.to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Issues the client's cancel key for a session (standing for the server's real one, kept in
/// `target`) and, with a shared store, records its hash there. A store that cannot be written
/// only costs cancels through other instances; the key works on this one.
pub(crate) async fn issue(gw: &Gateway, sid: &str, target: CancelTarget) -> BackendKey {
    let mut attempts = 0;
    loop {
        let key = gw.sessions.add_cancel_key(sid, target.clone());
        if !shared_store(gw) {
            return key;
        }
        attempts += 1;
        let hash = key_hash(key);
        let recording = gw.store.add_cancel_key(&hash, &gw.instance_id, sid);
        match tokio::time::timeout(STORE_WAIT, recording).await {
            Ok(Ok(true)) => return key,
            // Another instance's session holds the same key: draw another.
            Ok(Ok(false)) if attempts < 3 => gw.sessions.remove_cancel_key(sid),
            Ok(Ok(false)) => {
                tracing::warn!(%sid, "no free cancel key in the store; cancel works on this instance only");
                return key;
            }
            Ok(Err(err)) => {
                tracing::warn!(%sid, %err, "cancel key could not be recorded; cancel works on this instance only");
                return key;
            }
            Err(_) => {
                tracing::warn!(%sid, "recording the cancel key timed out; cancel works on this instance only");
                return key;
            }
        }
    }
}

/// Forgets a session's cancel key in the store (its relay has ended).
pub(crate) async fn forget(gw: &Gateway, sid: &str, key: BackendKey) {
    if !shared_store(gw) {
        return;
    }
    match tokio::time::timeout(STORE_WAIT, gw.store.remove_cancel_key(&key_hash(key))).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::warn!(%sid, %err, "cancel key could not be removed"),
        Err(_) => tracing::warn!(%sid, "removing the cancel key timed out"),
    }
}

/// How many cancel requests with unknown keys this process passes on through the store at
/// once. They come without authentication, each on a connection that is done with its
/// handshake at once; beyond this they are dropped, so a flood of them costs the store at
/// most this many calls in flight.
const MAX_PASSING_ON: usize = 8;

/// A cancel request with a key this instance does not know: passed on through the store to
/// the instance relaying the session, if any.
pub(crate) async fn pass_on(gw: &Gateway, key: BackendKey) {
    static PASSING_ON: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_PASSING_ON);
    if !shared_store(gw) {
        tracing::debug!("cancel request for an unknown key ignored");
        return;
    }
    let Ok(_passing) = PASSING_ON.try_acquire() else {
        tracing::debug!("cancel request dropped: {MAX_PASSING_ON} are being passed on already");
        return;
    };
    match tokio::time::timeout(STORE_WAIT, gw.store.request_cancel(&key_hash(key))).await {
        Ok(Ok(true)) => tracing::debug!("cancel request passed on to the instance relaying it"),
        Ok(Ok(false)) => tracing::debug!("cancel request for an unknown key ignored"),
        Ok(Err(err)) => tracing::info!(%err, "cancel request could not be passed on"),
        Err(_) => tracing::info!("passing a cancel request on timed out"),
    }
}

/// Carries out the cancel requests other instances passed on to this one, until `shutdown`.
/// Runs only with a shared store; asks the store only while this instance has cancel keys.
pub async fn watch_cancel_requests(gw: Arc<Gateway>, shutdown: CancellationToken) {
    if !shared_store(&gw) {
        return;
    }
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !gw.sessions.has_cancel_keys() {
            continue;
        }
        let taking = gw
            .store
            .take_cancel_requests(&gw.instance_id, REQUEST_MAX_AGE);
        let hashes = match tokio::time::timeout(STORE_WAIT, taking).await {
            Ok(Ok(hashes)) => hashes,
            // The heartbeat already says when the store cannot be reached.
            Ok(Err(err)) => {
                tracing::debug!(%err, "cancel requests could not be read");
                continue;
            }
            Err(_) => continue,
        };
        for hash in hashes {
            let Some(target) = gw.sessions.cancel_target_by_hash(&hash) else {
                tracing::debug!("cancel request passed on for a session that has ended");
                continue;
            };
            tokio::spawn(async move {
                if let Err(err) = target.send(CANCEL_FORWARD_WAIT).await {
                    tracing::info!(%err, "cancel request could not be forwarded");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_hash_is_sha256_of_the_key_bytes() {
        let key = BackendKey {
            process_id: 1,
            secret_key: -1,
        };
        // printf '\x00\x00\x00\x01\xff\xff\xff\xff' | sha256sum
        assert_eq!(
            key_hash(key),
            "102245a7156595b5282b6e88d1bb9545378aca8e0e067c14b48ca96992977b6e"
        );
        let other = BackendKey {
            process_id: 1,
            secret_key: -2,
        };
        assert_ne!(key_hash(key), key_hash(other));
    }
}
