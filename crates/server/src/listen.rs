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
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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

/// The accept queue asked of the kernel for every listener (Linux caps it at
/// `net.core.somaxconn`, 4,096 by default). The 128 that the standard library asks for is
/// overrun by a burst of clients (a pool warming up, a fleet restarting): the kernel then drops
/// the handshakes it has no room for, and those clients get in only after its SYN
/// retransmissions, a second or more later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` (`host:port`, the host a name or an address) with an accept
/// queue of [`LISTEN_BACKLOG`]: the first address `addr` resolves to that can be bound.
pub(crate) async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_err = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let bound = (|| {
            let socket = match resolved {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // A restarted gateway can bind again at once despite connections in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(resolved)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
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

    /// How many connections wait in the accept queue of the listening socket on `port`
    /// (`rx_queue` of its `/proc/net/tcp` line).
    fn accept_queue(port: u16) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let local = format!("0100007F:{port:04X}");
        table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[1] == local && f[3] == "0A")
            .map(|f| usize::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap())
            .expect("listening socket in /proc/net/tcp")
    }

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue_rather_than_being_dropped() {
        // A burst larger than the 128 that the standard library and mio ask for: the
        // connections beyond the queue would have their handshake dropped and be taken in
        // only after the kernel's SYN retransmissions (seconds later, or never for a client
        // that waits for the server to speak first).
        // 1,200 descriptors (both ends of each connection): more than some default limits.
        raise_fd_limit();
        let listener = bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let burst = 600;
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..burst {
            clients.spawn(async move {
                let connect = TcpStream::connect(("127.0.0.1", port));
                // Past the kernel's SYN retransmissions (1 s, then 3 s): a handshake dropped for
                // want of room is not let in later, since nothing accepts here.
                tokio::time::timeout(std::time::Duration::from_secs(5), connect).await
            });
        }
        let mut held = Vec::new();
        while let Some(done) = clients.join_next().await {
            if let Ok(Ok(stream)) = done.unwrap() {
                held.push(stream);
            }
        }
        assert_eq!(
            held.len(),
            burst,
            "connections established within the timeout"
        );
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap_or_default();
        assert_eq!(
            accept_queue(port),
            burst,
            "connections in the accept queue (net.core.somaxconn {})",
            somaxconn.trim()
        );
        drop(listener);
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
