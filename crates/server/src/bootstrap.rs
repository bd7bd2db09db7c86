//! Start-up: the store, the four certificate authorities, the listener certificate and the
//! admin identity that admin commands use to reach this gateway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dbward_pki::{CaKind, CaSet, CertAuthority, CertUsage, Identity};
use dbward_store::Store;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::GatewayError;

/// The admin identity's user name. It cannot log in with a password (it has none) and is
/// refused by the database listeners (its usage is `admin`).
pub const ADMIN_IDENTITY_NAME: &str = "dbward-admin";

/// Files that `dbward start` writes into `data_dir` for admin commands on the same machine.
pub struct AdminFiles {
    pub dir: PathBuf,
}

impl AdminFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("admin"),
        }
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("identity.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("identity.key")
    }
    pub fn host_ca(&self) -> PathBuf {
        self.dir.join("host-ca.crt")
    }
    pub fn endpoints(&self) -> PathBuf {
        self.dir.join("endpoints.json")
    }
}

/// The addresses the listeners actually bound (ports may have been chosen by the system).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Endpoints {
    pub web: String,
    pub postgres: Option<String>,
    pub mysql: Option<String>,
    /// The Prometheus listener, when `metrics_listen_addr` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    pub pid: u32,
}

/// Loads the CAs from the store, creating the missing ones. When several instances start at
/// once the first writer wins and everyone re-reads.
pub async fn load_or_create_cas(store: &Store, cluster: &str) -> Result<CaSet, GatewayError> {
    let existing = store.get_cas().await?;
    for kind in [CaKind::User, CaKind::Host, CaKind::Db, CaKind::DbClient] {
        if !existing.iter().any(|(k, _, _)| k == kind.as_str()) {
            let ca = CertAuthority::generate(kind, cluster)?;
            store
                .put_ca_if_absent(kind.as_str(), &ca.cert_pem, &ca.key_pem)
                .await?;
        }
    }
    let stored = store.get_cas().await?;
    let find = |kind: CaKind| -> Result<CertAuthority, GatewayError> {
        stored
            .iter()
            .find(|(k, _, _)| k == kind.as_str())
            .map(|(_, cert, key)| CertAuthority {
                kind,
                cert_pem: cert.clone(),
                key_pem: key.clone(),
            })
            .ok_or_else(|| GatewayError::Internal(format!("{} CA missing", kind.as_str())))
    };
    Ok(CaSet {
        user: find(CaKind::User)?,
        host: find(CaKind::Host)?,
        db: find(CaKind::Db)?,
        db_client: find(CaKind::DbClient)?,
    })
}

/// Writes a fresh admin certificate (usage `admin`, one year) and the host CA into `data_dir`.
pub fn write_admin_identity(
    data_dir: &Path,
    cas: &CaSet,
    cluster: &str,
) -> Result<(), GatewayError> {
    let files = AdminFiles::new(data_dir);
    std::fs::create_dir_all(&files.dir)?;
    set_mode(&files.dir, 0o700)?;
    let (key_pem, csr_pem) = dbward_pki::new_key_and_csr(ADMIN_IDENTITY_NAME)?;
    let identity = Identity {
        username: ADMIN_IDENTITY_NAME.to_string(),
        cluster: cluster.to_string(),
        usage: CertUsage::Admin,
        expires: OffsetDateTime::now_utc() + Duration::from_secs(365 * 24 * 3600),
        route: None,
        pinned_ip: None,
        mfa_session_until: None,
    };
    let cert = dbward_pki::issue_user_cert(&cas.user, &identity, &csr_pem)?;
    dbward_pki::write_private_file(&files.key(), key_pem.as_bytes())?;
    dbward_pki::write_private_file(&files.cert(), cert.as_bytes())?;
    std::fs::write(files.host_ca(), cas.host.cert_pem.as_bytes())?;
    Ok(())
}

pub fn write_endpoints(data_dir: &Path, endpoints: &Endpoints) -> Result<(), GatewayError> {
    let files = AdminFiles::new(data_dir);
    let json = serde_json::to_string_pretty(endpoints)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    std::fs::write(files.endpoints(), json)?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
