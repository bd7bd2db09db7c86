//! Accepting connections on every listener (web, postgres, mysql) within the `limits:` of the
//! configuration.
//!
//! A connection that has not yet shown who it is holds a pending slot from the moment it is
//! accepted until its handshake ends (the listener drops the [`Pending`] guard). Slots are
//! counted overall and per client address; a connection beyond either cap is closed at once,
//! before a byte of it is read, so that slow or silent clients cannot take every file
//! descriptor of the process (which the database listeners share with the web API). How long a
//! handshake may take is each listener's business (`limits.handshake_timeout`); this module
//! only counts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use dbward_model::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The pending slots of all listeners of one gateway.
#[derive(Debug)]
pub struct PendingGate {
    max_total: usize,
    max_per_address: usize,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One pending slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Pending {
    gate: Arc<PendingGate>,
    address: IpAddr,
}

impl PendingGate {
    /// The gate for `limits`, its overall cap kept below half the file descriptors this
    /// process may open (after raising the soft limit to the hard one), so that pending
    /// connections can never take the descriptors live sessions and the store need.
    pub fn new(limits: &Limits) -> Arc<PendingGate> {
        let mut max_total = limits.max_pending_connections.max(1);
        if let Some(fds) = raise_fd_limit() {
            let room = usize::try_from(fds / 2).unwrap_or(usize::MAX).max(1);
            if room < max_total {
                tracing::warn!(
                    max_pending_connections = max_total,
                    open_files_limit = fds,
                    "limits.max_pending_connections lowered to half the open files limit"
                );
                max_total = room;
            }
        }
        Arc::new(PendingGate {
            max_total,
            max_per_address: limits.max_pending_per_address.max(1),
            state: Mutex::new(GateState::default()),
        })
    }

    /// A slot for a connection from `peer`, or `None` when a cap is reached.
    pub fn try_enter(self: &Arc<Self>, peer: IpAddr) -> Option<Pending> {
        let address = address_key(peer);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.total >= self.max_total {
            return None;
        }
        let count = state.per_address.entry(address).or_insert(0);
        if *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        state.total += 1;
        Some(Pending {
            gate: self.clone(),
            address,
        })
    }

    /// Slots in use, overall.
    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_address.remove(&self.address);
            }
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (many systems start
/// services at 1,024); returns the limit now in force, or `None` when it cannot be read.
fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64), IPv4-mapped IPv6 as the IPv4 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Accepts connections until `shutdown`, one task per connection, each holding a pending
/// slot of `gate` that it drops once its handshake is over. A connection without a free slot
/// is closed at once. An accept error (out of file descriptors, say) is logged and retried
/// after a short pause.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    gate: Arc<PendingGate>,
    shutdown: CancellationToken,
    what: &'static str,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr, Pending) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(%err, listener = what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(pending) = gate.try_enter(peer.ip()) else {
            // Logged at debug: a flood would otherwise fill the log at the flood's rate.
            tracing::debug!(%peer, listener = what, "too many connections in their handshake; closed");
            drop(tcp);
            continue;
        };
        // Small interactive messages both ways: do not hold them back.
        let _ = tcp.set_nodelay(true);
        // The accept time travels with the task, for the connection setup latency.
        tokio::spawn(crate::metrics::connection(handle(tcp, peer, pending)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_address: usize) -> Arc<PendingGate> {
        PendingGate::new(&Limits {
            max_pending_connections: total,
            max_pending_per_address: per_address,
            ..Limits::default()
        })
    }

    #[test]
    fn slots_are_capped_per_address_and_overall_and_freed_on_drop() {
        let g = gate(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = g.try_enter(a).unwrap();
        let _a2 = g.try_enter(a).unwrap();
        assert!(g.try_enter(a).is_none(), "third from one address");
        let _b1 = g.try_enter(b).unwrap();
        assert!(g.try_enter(b).is_none(), "fourth overall");
        drop(a1);
        let b2 = g.try_enter(b);
        assert!(b2.is_some(), "a freed slot is reusable");
        assert_eq!(g.in_use(), 3);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let g = gate(10, 1);
        let _one = g.try_enter("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(g.try_enter("2001:db8:1:2::ffff".parse().unwrap()).is_none());
        assert!(g.try_enter("2001:db8:1:3::1".parse().unwrap()).is_some());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
