//! TLS for the admin connections: the shared tokio-postgres adapter, verifying the configured
//! server name rather than the dialled address.

pub use dbward_pgtls::{MakeRustlsConnect, RustlsConnect, RustlsStream};
