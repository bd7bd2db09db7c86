//! dbward's database wire protocols: the client-facing handshake (TLS, startup, cancel), the
//! gateway's own connection to the database server, and the relay with its audit tap.
//!
//! This crate speaks protocols only. Who a client is, what it may reach and which database
//! user it becomes are decided by the caller; errors are returned, and the caller chooses
//! what a client is told.

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod mysql;
pub mod pg;
mod relay;

pub use error::{AuthenticationKind, ProxyError, UpstreamError};
