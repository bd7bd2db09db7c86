//! dbward's database wire protocols: the client-facing handshake (TLS, startup, cancel), the
//! gateway's own connection to the database server, and the relay with its audit tap.
//!
//! `pg/` and `mysql/` hold one engine each and import only their own modules and the shared
//! ones here: [`handshake`] (limits, TLS accept), [`relay`] (the byte relay and how it
//! ended) and [`error`].
//!
//! This crate speaks protocols only. Who a client is, what it may reach and which database
//! user it becomes are decided by the caller; errors are returned, and the caller chooses
//! what a client is told.

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod mysql;
pub mod pg;
pub mod relay;
#[cfg(test)]
pub(crate) mod testing;

pub use error::{AuthenticationKind, ProxyError, UpstreamError};
pub use handshake::HandshakeLimits;
pub use relay::{IdleLimit, RelayEnd, RelayStats, Side};
