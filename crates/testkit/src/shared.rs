//! One PostgreSQL and one MariaDB per test binary, started on first use and stopped when the
//! process exits.
//!
//! Statics are never dropped, so teardown is an `atexit` hook (normal exit, including the test
//! harness's exit after failures) backed by each server's watchdog (the process was killed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};

use anyhow::anyhow;
use dbward_pki::CaSet;
use tempfile::TempDir;

use crate::certs::DbServerCerts;
use crate::maria::MariaServer;
use crate::pg::PgServer;
use crate::process::short_temp_dir;

struct SharedCerts {
    cas: CaSet,
    server: DbServerCerts,
    dir: TempDir,
}

static CERTS: OnceLock<Result<SharedCerts, String>> = OnceLock::new();
static PG: OnceLock<Result<PgServer, String>> = OnceLock::new();
static MARIA: OnceLock<Result<MariaServer, String>> = OnceLock::new();
static AT_EXIT: Once = Once::new();
static REMOVE_AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Deletes `path` (a directory and everything below it) when the test process exits normally,
/// after the shared servers have stopped: for files that live as long as the process, such as
/// a gateway in a `static` that is never dropped.
pub fn remove_at_exit(path: &Path) {
    register_teardown();
    match REMOVE_AT_EXIT.lock() {
        Ok(mut paths) => paths.push(path.to_path_buf()),
        Err(poisoned) => poisoned.into_inner().push(path.to_path_buf()),
    }
}

/// The CAs of the shared servers: issue client certificates from `db_client`, verify the
/// servers with `db`.
pub fn shared_cas() -> anyhow::Result<&'static CaSet> {
    shared_certs().map(|c| &c.cas)
}

/// The PostgreSQL server of this test binary, started on first call with certificates from
/// [`shared_cas`]. Tests share it, so each must use its own names ([`unique_name`]).
pub fn shared_pg() -> anyhow::Result<&'static PgServer> {
    let certs = shared_certs()?;
    PG.get_or_init(|| PgServer::start(&certs.server).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("starting the shared PostgreSQL failed: {e}"))
}

/// The MariaDB server of this test binary; see [`shared_pg`].
pub fn shared_maria() -> anyhow::Result<&'static MariaServer> {
    let certs = shared_certs()?;
    MARIA
        .get_or_init(|| MariaServer::start(&certs.server).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("starting the shared MariaDB failed: {e}"))
}

/// A name no other call in this process returns: `<prefix>_<pid>_<counter>`. Use it for
/// databases and users on a shared server. Lower case as long as `prefix` is, so it needs no
/// quoting in PostgreSQL.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}

fn shared_certs() -> anyhow::Result<&'static SharedCerts> {
    // Registered with the first shared thing of any kind: a test binary that only uses
    // `shared_cas` must still delete the certificates' directory.
    register_teardown();
    CERTS
        .get_or_init(|| {
            let make = || -> anyhow::Result<SharedCerts> {
                let cas = CaSet::generate("dbward-test")?;
                let dir = short_temp_dir("dbwcert")?;
                let server = DbServerCerts::from_cas(&cas, dir.path())?;
                Ok(SharedCerts { cas, server, dir })
            };
            make().map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("creating the shared test certificates failed: {e}"))
}

fn register_teardown() {
    AT_EXIT.call_once(|| {
        // SAFETY: `teardown` is an `extern "C" fn()` that never unwinds.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(teardown);
        }
    });
}

extern "C" fn teardown() {
    // A panic must not cross the C boundary.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(pg)) = PG.get() {
            pg.shutdown();
        }
        if let Some(Ok(maria)) = MARIA.get() {
            maria.shutdown();
        }
        if let Some(Ok(certs)) = CERTS.get() {
            let _ = std::fs::remove_dir_all(certs.dir.path());
        }
        let paths = match REMOVE_AT_EXIT.lock() {
            Ok(mut paths) => std::mem::take(&mut *paths),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for path in paths {
            let _ = std::fs::remove_dir_all(path);
        }
    });
}
