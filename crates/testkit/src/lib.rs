//! Ephemeral PostgreSQL and MariaDB servers for dbward's tests, configured the way a user
//! configures them for dbward: TLS on, client-certificate authentication, certificates from
//! dbward's own CAs. The servers are `dbward-localdb`'s; this crate gives each its own
//! temporary directory, a watchdog, and per-binary sharing.
//!
//! Every server lives in its own temporary directory under `/tmp` (short paths, because Unix
//! socket paths are limited to 107 bytes), listens on `127.0.0.1` on a port picked at run time,
//! and is stopped when its handle is dropped, also when a test panics. A watchdog process stops
//! it too if the test process dies without unwinding (killed, aborted), so no server outlives
//! the test run.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use dbward_testkit::{DbServerCerts, PgServer};
//! let cas = dbward_pki::CaSet::generate("test")?;
//! let dir = tempfile::tempdir()?;
//! let certs = DbServerCerts::from_cas(&cas, dir.path())?;
//! let pg = PgServer::start(&certs)?;
//! pg.psql_super(r#"CREATE ROLE "teleport-admin" LOGIN"#)?;
//! // connect to 127.0.0.1:pg.port with a db-client certificate CN=teleport-admin
//! # Ok(()) }
//! ```
//!
//! For a whole test binary, [`shared_pg`] and [`shared_maria`] start one server each on first
//! use; give every test its own names with [`unique_name`].
//!
//! This crate is test support only: it shells out to the database binaries and must never be
//! a dependency of production code.

mod certs;
mod maria;
mod pg;
mod ports;
mod process;
mod shared;

pub use certs::{ClientCertFiles, DbServerCerts};
pub use dbward_localdb::pg_versions;
pub use maria::MariaServer;
pub use pg::{PgServer, PG_MAJOR_ENV};
pub use ports::listen_port;
pub use process::require_binaries;
pub use shared::{remove_at_exit, shared_cas, shared_maria, shared_pg, unique_name};
