//! The four certificate authorities of a dbward cluster and how to create them.
//!
//! A CA is kept as PEM text (certificate and PKCS#8 key) so a store can persist it as is.
//! This module only creates and loads CAs; issuing leaf certificates lives in `issue`.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::Duration;

use crate::error::{PkiError, Result};
use crate::issue::{now_whole_seconds, random_serial};

/// How long a CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3650);

/// Which of the four CAs; each signs one kind of certificate (see DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKind {
    /// Signs certificates issued to people at login; trusted by dbward's listeners.
    User,
    /// Signs dbward's own listener certificates; trusted by clients.
    Host,
    /// Signs database server certificates; trusted by dbward when it connects to a database.
    Db,
    /// Signs the certificates dbward presents to databases; trusted by the databases.
    DbClient,
}

impl CaKind {
    /// All kinds, in a stable order.
    pub const ALL: [CaKind; 4] = [CaKind::User, CaKind::Host, CaKind::Db, CaKind::DbClient];

    /// The name used on the command line and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            CaKind::User => "user",
            CaKind::Host => "host",
            CaKind::Db => "db",
            CaKind::DbClient => "db-client",
        }
    }
}

impl fmt::Display for CaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CaKind {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        CaKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| PkiError::UnknownCaKind(s.to_owned()))
    }
}

/// One certificate authority: its self-signed certificate and private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertAuthority {
    pub kind: CaKind,
    pub cert_pem: String,
    pub key_pem: String,
}

// The key must never end up in logs.
impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("kind", &self.kind)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertAuthority {
    /// Creates a new CA: ECDSA P-256 key, ten years, subject `CN=dbward <kind> CA, O=<cluster>`.
    pub fn generate(kind: CaKind, cluster_name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("dbward {kind} CA"));
        name.push(DnType::OrganizationName, cluster_name);
        params.distinguished_name = name;
        // Path length 0: a dbward CA signs leaf certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = now_whole_seconds();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(CertAuthority {
            kind,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate in DER form (for trust stores).
    pub fn cert_der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| PkiError::Pem(format!("{} CA certificate: {e}", self.kind)))
    }

    /// Loads the CA as an rcgen issuer.
    ///
    /// rcgen 0.13 signs with an issuer `Certificate`, so the stored certificate's parameters are
    /// read back and re-signed in memory. Only its subject and key identifier are used when
    /// signing, and both come from the stored certificate, so leaf certificates chain to the
    /// stored CA certificate.
    pub(crate) fn issuer(&self) -> Result<(Certificate, KeyPair)> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(&self.cert_pem)?;
        let cert = params.self_signed(&key)?;
        Ok((cert, key))
    }
}

/// The four CAs of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaSet {
    pub user: CertAuthority,
    pub host: CertAuthority,
    pub db: CertAuthority,
    pub db_client: CertAuthority,
}

impl CaSet {
    /// Creates all four CAs for a cluster.
    pub fn generate(cluster_name: &str) -> Result<Self> {
        Ok(CaSet {
            user: CertAuthority::generate(CaKind::User, cluster_name)?,
            host: CertAuthority::generate(CaKind::Host, cluster_name)?,
            db: CertAuthority::generate(CaKind::Db, cluster_name)?,
            db_client: CertAuthority::generate(CaKind::DbClient, cluster_name)?,
        })
    }

    /// The CA of the given kind.
    pub fn get(&self, kind: CaKind) -> &CertAuthority {
        match kind {
            CaKind::User => &self.user,
            CaKind::Host => &self.host,
            CaKind::Db => &self.db,
            CaKind::DbClient => &self.db_client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn ca_kind_round_trips_through_its_name() {
        for kind in CaKind::ALL {
            assert_eq!(kind.as_str().parse::<CaKind>().ok(), Some(kind));
        }
        assert!("users".parse::<CaKind>().is_err());
        assert_eq!(
            serde_json::to_string(&CaKind::DbClient).ok().as_deref(),
            Some("\"db-client\"")
        );
    }

    #[test]
    fn generated_ca_is_a_p256_ca_named_after_kind_and_cluster() -> Result<()> {
        let ca = CertAuthority::generate(CaKind::DbClient, "prod")?;
        let der = ca.cert_der()?;
        let (_, cert) = parse_x509_certificate(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
        assert_eq!(cert.subject().to_string(), "CN=dbward db-client CA, O=prod");
        assert_eq!(cert.issuer(), cert.subject());
        let basic = cert.basic_constraints().ok().flatten().map(|b| b.value.ca);
        assert_eq!(basic, Some(true));
        let oid = cert
            .public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        assert_eq!(
            oid.map(|o| o.to_id_string()).as_deref(),
            Some("1.2.840.10045.3.1.7")
        );
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(lifetime > 3649 * 86400, "lifetime {lifetime}s");
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        Ok(())
    }

    #[test]
    fn ca_set_serializes_and_reads_back() -> Result<()> {
        let set = CaSet::generate("c1")?;
        let json = serde_json::to_string(&set).map_err(|e| PkiError::Parse(e.to_string()))?;
        let back: CaSet =
            serde_json::from_str(&json).map_err(|e| PkiError::Parse(e.to_string()))?;
        assert_eq!(back, set);
        assert_eq!(set.get(CaKind::Db).kind, CaKind::Db);
        assert_ne!(set.user.cert_pem, set.host.cert_pem);
        Ok(())
    }
}
