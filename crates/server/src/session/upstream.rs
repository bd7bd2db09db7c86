//! TLS material for connections to databases: a db-client certificate `CN=<db user>` and the
//! server verification the `db` resource asks for. Certificates are short-lived and cached per
//! (database resource, db user) so signing stays off the connection's critical path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbward_model::{Db, DbSpec, TlsMode};
use dbward_pki::{CaSet, ServerVerification};
use rustls_pki_types::ServerName;

use super::SessionError;

/// How long an upstream client certificate is valid, and how long it is reused.
const CERT_TTL: Duration = Duration::from_secs(3600);
const CACHE_FOR: Duration = Duration::from_secs(45 * 60);

/// Where and how to reach one database over TLS as one user.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub addr: String,
    pub host: String,
    pub port: u16,
    pub server_name: ServerName<'static>,
    pub server_name_text: String,
    pub tls: Arc<rustls::ClientConfig>,
}

/// A cached target, with the `db` spec it was built from: an edited resource (another
/// address, other TLS settings) must not be served from the cache.
type Cached = (Instant, DbSpec, UpstreamTarget);

#[derive(Default)]
pub struct UpstreamCredentials {
    cache: Mutex<HashMap<(String, String), Cached>>,
}

impl UpstreamCredentials {
    /// The TLS target for `db_user` on `db`, from the cache when fresh.
    pub fn target(
        &self,
        cas: &CaSet,
        db: &Db,
        db_user: &str,
    ) -> Result<UpstreamTarget, SessionError> {
        let key = (db.metadata.name.clone(), db_user.to_string());
        if let Some((made, spec, target)) = self.lock().get(&key) {
            if made.elapsed() < CACHE_FOR && *spec == db.spec {
                return Ok(target.clone());
            }
        }
        let target = build_target(cas, db, db_user)?;
        self.lock()
            .insert(key, (Instant::now(), db.spec.clone(), target.clone()));
        Ok(target)
    }

    /// Forgets cached material of one database (its resource changed).
    pub fn forget_db(&self, db: &str) {
        self.lock().retain(|(name, _), _| name != db);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn build_target(cas: &CaSet, db: &Db, db_user: &str) -> Result<UpstreamTarget, SessionError> {
    let (host, port) = db
        .host_port()
        .map_err(|e| SessionError::Internal(format!("db {}: {e}", db.metadata.name)))?;
    let roots = db
        .spec
        .tls
        .ca_pem()
        .map_err(|e| SessionError::Internal(format!("db {}: {e}", db.metadata.name)))?
        .unwrap_or_else(|| cas.db.cert_pem.clone());
    let verification = match db.spec.tls.mode {
        TlsMode::VerifyFull => ServerVerification::Full,
        TlsMode::VerifyCa => ServerVerification::CaOnly,
        TlsMode::Insecure => ServerVerification::Insecure,
    };
    let (cert_pem, key_pem) = dbward_pki::issue_db_client_cert(&cas.db_client, db_user, CERT_TTL)
        .map_err(|e| {
        SessionError::Internal(format!("db-client certificate for {db_user:?}: {e}"))
    })?;
    let tls = dbward_pki::client_config(Some(&roots), verification, Some((&cert_pem, &key_pem)))
        .map_err(|e| SessionError::Internal(format!("db {} TLS: {e}", db.metadata.name)))?;
    let server_name_text = db
        .spec
        .tls
        .server_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| host.clone());
    let server_name = ServerName::try_from(server_name_text.clone()).map_err(|e| {
        SessionError::Internal(format!("db {}: server name: {e}", db.metadata.name))
    })?;
    Ok(UpstreamTarget {
        addr: format!("{host}:{port}"),
        host,
        port,
        server_name,
        server_name_text,
        tls,
    })
}
