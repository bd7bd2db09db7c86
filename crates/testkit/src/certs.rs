//! Certificate files for test servers and test clients, as `dbward auth sign --format db`
//! writes them.
//!
//! The servers only take file paths ([`DbServerCerts`]), so a test can also feed them files
//! produced by the real `dbward` command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use dbward_pki::{CaSet, CertAuthority};

/// How long test certificates stay valid: longer than any test run.
const TEST_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The host names a test server certificate covers; clients verify one of them.
const SERVER_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// The three files a database server needs for TLS with client-certificate authentication:
/// the output of `dbward auth sign --format db --out PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbServerCerts {
    /// Server certificate (`PREFIX.crt`), signed by the db CA.
    pub crt: PathBuf,
    /// Server private key (`PREFIX.key`).
    pub key: PathBuf,
    /// CA certificates the server trusts for client certificates (`PREFIX.cas`): the
    /// db-client CA.
    pub cas: PathBuf,
}

impl DbServerCerts {
    /// Issues a server certificate for `localhost` and `127.0.0.1` from the db CA of `cas`
    /// and writes `server.crt`, `server.key` and `server.cas` (the db-client CA) into `dir`.
    pub fn from_cas(cas: &CaSet, dir: &Path) -> anyhow::Result<DbServerCerts> {
        let hosts: Vec<String> = SERVER_HOSTS.iter().map(|h| h.to_string()).collect();
        let (cert_pem, key_pem) = dbward_pki::issue_db_server_cert(&cas.db, &hosts, TEST_CERT_TTL)
            .context("issuing the test database server certificate")?;
        let certs = DbServerCerts {
            crt: dir.join("server.crt"),
            key: dir.join("server.key"),
            cas: dir.join("server.cas"),
        };
        write_file(&certs.crt, cert_pem.as_bytes())?;
        write_private(&certs.key, key_pem.as_bytes())?;
        write_file(&certs.cas, cas.db_client.cert_pem.as_bytes())?;
        Ok(certs)
    }

    /// The same three files as the launcher takes them.
    pub fn tls(&self) -> dbward_localdb::ServerTls {
        dbward_localdb::ServerTls {
            crt: self.crt.clone(),
            key: self.key.clone(),
            cas: self.cas.clone(),
        }
    }
}

/// A client certificate for a database user, with the CA that verifies the server: what dbward
/// presents to a database, in files that `psql` (`sslcert`, `sslkey`, `sslrootcert`) and
/// `mariadb` (`--ssl-cert`, `--ssl-key`, `--ssl-ca`) read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    /// Client certificate, subject exactly `CN=<db user>`.
    pub crt: PathBuf,
    /// Client private key (mode 0600).
    pub key: PathBuf,
    /// The db CA certificate, to verify the server's certificate.
    pub server_ca: PathBuf,
}

impl ClientCertFiles {
    /// Issues a certificate for `db_user` from the db-client CA of `cas` and writes
    /// `<db_user>.crt`, `<db_user>.key` and `db-ca.crt` into `dir`.
    pub fn issue(cas: &CaSet, db_user: &str, dir: &Path) -> anyhow::Result<ClientCertFiles> {
        Self::issue_with(&cas.db_client, &cas.db, db_user, dir)
    }

    /// Like [`ClientCertFiles::issue`] with explicit CAs: `client_ca` signs the client
    /// certificate, `server_ca` is trusted for the server's certificate. Lets a test present a
    /// certificate from a CA the database does not trust.
    pub fn issue_with(
        client_ca: &CertAuthority,
        server_ca: &CertAuthority,
        db_user: &str,
        dir: &Path,
    ) -> anyhow::Result<ClientCertFiles> {
        let (cert_pem, key_pem) =
            dbward_pki::issue_db_client_cert(client_ca, db_user, TEST_CERT_TTL)
                .with_context(|| format!("issuing a client certificate for {db_user:?}"))?;
        // The user name may hold characters a file name cannot; the files only need to differ.
        let stem = file_stem(db_user);
        let files = ClientCertFiles {
            crt: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            server_ca: dir.join("db-ca.crt"),
        };
        write_file(&files.crt, cert_pem.as_bytes())?;
        write_private(&files.key, key_pem.as_bytes())?;
        write_file(&files.server_ca, server_ca.cert_pem.as_bytes())?;
        Ok(files)
    }
}

fn file_stem(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("client-{safe}-{:x}", fnv1a(name.as_bytes()))
}

/// A tiny stable hash so distinct names that sanitize alike still get distinct files.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn write_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    dbward_pki::write_private_file(path, contents)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_file_names_differ_for_names_that_sanitize_alike() {
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
        assert!(file_stem("teleport-admin").starts_with("client-teleport-admin-"));
    }
}
