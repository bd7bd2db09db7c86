//! Ports for listeners that a test configures before the process that binds them starts.
//!
//! A port taken from `bind(127.0.0.1:0)` lies in the kernel's ephemeral range, which every
//! outgoing connection on the machine draws from too: a gateway restarted on such a port may
//! find it held by some test's client socket. Ports handed out here lie below that range and are
//! spread at random, so only another listener could clash with them.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out.
const FLOOR: u16 = 12_000;

/// A TCP port on 127.0.0.1, free when chosen, outside the ephemeral range, and not handed out
/// before by this process.
pub fn listen_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ceiling = ephemeral_floor().max(FLOOR + 1_000);
    let state = RandomState::new();
    for attempt in 0u32..10_000 {
        let span = u64::from(ceiling - FLOOR);
        let port = FLOOR + (state.hash_one((std::process::id(), attempt)) % span) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        return port;
    }
    panic!("no free port between {FLOOR} and {ceiling}");
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| listen_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports
            .iter()
            .all(|&p| p >= FLOOR && p < ephemeral_floor().max(FLOOR + 1_000)));
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }
}
