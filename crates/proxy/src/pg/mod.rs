//! The PostgreSQL wire protocol, in the order a session uses it:
//!
//! 1. [`accept`] takes a client connection through TLS (SSLRequest or PostgreSQL 17 direct
//!    TLS) to its StartupMessage, or recognises a CancelRequest;
//! 2. [`upstream::connect`] opens the gateway's own TLS session to the database server and
//!    authenticates it with the gateway's client certificate;
//! 3. [`write_startup_reply`] tells the client its session is ready, with the server's
//!    parameters and a gateway-issued [`BackendKey`];
//! 4. [`relay`] copies bytes both ways and taps the SQL the client sends;
//! 5. [`cancel::send_cancel`] forwards a cancel request to the server.
//!
//! Nothing here decides who may connect or as whom.

pub mod cancel;
pub mod messages;
pub mod relay;
pub mod startup;
pub mod upstream;

pub use messages::Severity;
pub use relay::{relay, RelayEnd, RelayStats, Side, TapEvent};
pub use startup::{
    accept, send_error, write_startup_reply, Accepted, ClientStartup, ClientTlsStream,
    HandshakeLimits, PrefixedStream, TLS_REQUIRED_MESSAGE,
};
pub use upstream::Upstream;

/// The key a session is cancelled by: what BackendKeyData carries and a CancelRequest
/// repeats (protocol 3.0, 4-byte secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// Process id.
    pub process_id: i32,
    /// Secret key.
    pub secret_key: i32,
}

/// A fresh random key for the gateway to hand to a client in place of the server's own, so
/// that a client never learns (and can never replay) the server's real key.
pub fn random_backend_key() -> BackendKey {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    BackendKey {
        // PostgreSQL process ids are positive; clients may print or parse them as such.
        process_id: rng.gen_range(1..=i32::MAX),
        secret_key: rng.gen(),
    }
}

#[cfg(test)]
pub(crate) mod testing;
