//! PEM parsing for certificates and keys, and writing private files (keys, certificates)
//! so no other user can read them, even for a moment.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{PkiError, Result};

/// Every certificate in `pem`, in order (leaf first for a chain). Fails when there is none.
pub fn parse_cert_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, SEC1 or PKCS#1).
pub fn parse_key_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Pem(format!("private key: {e}")))
}

/// Writes `contents` to `path` with mode 0600, replacing the file atomically.
///
/// The data goes to a new file next to `path` (created 0600, so it is never readable by
/// others), is flushed to disk and then renamed over `path`: a reader sees the old file or
/// the new one, never a partial one.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(path)?;
    let result = write_new_private(&temp, contents).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        // Best effort: the temporary file may not exist if creating it failed.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A name in the same directory (rename must not cross file systems) that no other writer
/// in this or another process picks at the same time.
fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(temp_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_file_is_mode_0600_and_replaced_whole() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        write_private_file(&path, b"first version, longer")?;
        write_private_file(&path, b"second")?;
        assert_eq!(fs::read(&path)?, b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn private_file_write_replaces_a_world_readable_file_with_a_private_one() -> std::io::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cert.pem");
        fs::write(&path, b"old")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
            write_private_file(&path, b"new")?;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        Ok(())
    }

    #[test]
    fn pem_parsing_reads_chains_and_rejects_garbage() -> Result<()> {
        let ca = crate::CertAuthority::generate(crate::CaKind::Host, "c")?;
        let other = crate::CertAuthority::generate(crate::CaKind::Db, "c")?;
        let both = format!("{}{}", ca.cert_pem, other.cert_pem);
        assert_eq!(parse_cert_pem(&both)?.len(), 2);
        assert!(parse_cert_pem("not pem").is_err());
        assert!(parse_cert_pem(&ca.key_pem).is_err());
        assert!(matches!(
            parse_key_pem(&ca.key_pem)?,
            PrivateKeyDer::Pkcs8(_)
        ));
        assert!(parse_key_pem(&ca.cert_pem).is_err());
        Ok(())
    }
}
