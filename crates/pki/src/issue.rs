//! Issuing leaf certificates: user certificates from CSRs, host and database server
//! certificates, and the client certificates dbward presents to databases.
//!
//! Every leaf is ECDSA P-256 with a random serial, starts a few minutes in the past (clock skew
//! between machines) and ends at the requested time, truncated to whole seconds.

use std::net::IpAddr;
use std::time::Duration as StdDuration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::{Duration, OffsetDateTime};

use crate::ca::{CaKind, CertAuthority};
use crate::error::{PkiError, Result};
use crate::identity::{encode_identity_extension, ClusterClaims, Identity};

/// How far back a new certificate's validity starts, to tolerate clocks that run behind.
const BACKDATE: Duration = Duration::minutes(5);

/// Creates a client key pair and a CSR for it, both PEM. The CSR's subject is only a hint:
/// the issuer replaces everything except the public key.
pub fn new_key_and_csr(common_name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_only(common_name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Whether the first certificate of `cert_pem` is for the key pair `key_pem` (a client
/// making sure a certificate it was handed is for the key it generated).
pub fn cert_matches_key(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Some(der) = crate::parse_cert_pem(cert_pem)
        .ok()
        .and_then(|certs| certs.into_iter().next())
    else {
        return false;
    };
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, cert)) => cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        Err(_) => false,
    }
}

/// Checks that `csr_pem` is a certificate request signed by its own key (the requester holds
/// the key), without issuing anything.
pub fn check_csr(csr_pem: &str) -> Result<()> {
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| PkiError::InvalidCsr)?;
    Ok(())
}

/// Issues a user certificate for `identity`, signed by the user CA, for the key in `csr_pem`.
///
/// Only the CSR's public key is used (its self-signature proves the client holds the key);
/// subject, validity and extensions all come from `identity`.
pub fn issue_user_cert(ca: &CertAuthority, identity: &Identity, csr_pem: &str) -> Result<String> {
    issue_user_cert_with_claims(ca, identity, &ClusterClaims::default(), csr_pem)
}

/// [`issue_user_cert`] with cluster claims (identity payload version 4 when any is set).
pub fn issue_user_cert_with_claims(
    ca: &CertAuthority,
    identity: &Identity,
    claims: &ClusterClaims,
    csr_pem: &str,
) -> Result<String> {
    expect_kind(ca, CaKind::User)?;
    let csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| PkiError::InvalidCsr)?;
    let expires = identity
        .expires
        .replace_nanosecond(0)
        .map_err(|e| PkiError::InvalidIdentity(format!("expiry: {e}")))?;
    let mut params = leaf_params(expires)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, identity.username.as_str());
    name.push(DnType::OrganizationName, identity.cluster.as_str());
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let identity = Identity {
        expires,
        ..identity.clone()
    };
    params.custom_extensions = vec![encode_identity_extension(&identity, Some(claims))?];
    let (issuer, issuer_key) = ca.issuer()?;
    let cert = CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    }
    .signed_by(&issuer, &issuer_key)?;
    Ok(cert.pem())
}

/// Issues a certificate for one of dbward's own listeners (web, postgres, mysql), signed by
/// the host CA, for `hosts` with a fresh key; returns (certificate PEM, key PEM).
///
/// Hosts that parse as IP addresses become IP SANs, the rest DNS SANs; the CN is the first.
pub fn issue_host_cert(
    ca: &CertAuthority,
    hosts: &[String],
    ttl: StdDuration,
) -> Result<(String, String)> {
    expect_kind(ca, CaKind::Host)?;
    issue_server_cert(ca, hosts, ttl)
}

/// Issues a database *server* certificate signed by the db CA (`dbward auth sign --format db`);
/// returns (certificate PEM, key PEM).
///
/// Hosts that parse as IP addresses become IP SANs, the rest DNS SANs; the CN is the first.
/// The database also needs the db-client CA certificate (`PREFIX.cas`) to trust dbward.
pub fn issue_db_server_cert(
    db_ca: &CertAuthority,
    hosts: &[String],
    ttl: StdDuration,
) -> Result<(String, String)> {
    expect_kind(db_ca, CaKind::Db)?;
    issue_server_cert(db_ca, hosts, ttl)
}

fn issue_server_cert(
    ca: &CertAuthority,
    hosts: &[String],
    ttl: StdDuration,
) -> Result<(String, String)> {
    let first = hosts.first().ok_or_else(|| {
        PkiError::InvalidName("a server certificate needs at least one host".into())
    })?;
    let mut params = leaf_params(expiry_after(ttl)?)?;
    params.distinguished_name = common_name_only(first);
    params.subject_alt_names =
        hosts
            .iter()
            .map(|host| match host.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) if !is_dns_name(host) => Err(PkiError::InvalidName(format!(
                    "{host:?} is neither an IP address nor a DNS name"
                ))),
                Err(_) => host.as_str().try_into().map(SanType::DnsName).map_err(|_| {
                    PkiError::InvalidName(format!("{host:?} is not a valid DNS name"))
                }),
            })
            .collect::<Result<_>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sign_with_new_key(ca, params)
}

/// Issues the certificate dbward presents to a database as `db_user`; returns (certificate PEM,
/// key PEM).
///
/// The subject is exactly `CN=<db_user>` and nothing else: PostgreSQL `cert` authentication
/// compares the CN with the user name and MariaDB `REQUIRE SUBJECT '/CN=<db_user>'` compares
/// the whole subject.
pub fn issue_db_client_cert(
    ca: &CertAuthority,
    db_user: &str,
    ttl: StdDuration,
) -> Result<(String, String)> {
    expect_kind(ca, CaKind::DbClient)?;
    if db_user.is_empty() {
        return Err(PkiError::InvalidName("empty database user".into()));
    }
    // PostgreSQL refuses a CN with an embedded NUL (it could truncate the compared name).
    if db_user.contains('\0') {
        return Err(PkiError::InvalidName(
            "database user contains a NUL character".into(),
        ));
    }
    let mut params = leaf_params(expiry_after(ttl)?)?;
    params.distinguished_name = common_name_only(db_user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign_with_new_key(ca, params)
}

/// The subject of a `CN=<common_name>` certificate as OpenSSL's `X509_NAME_oneline` prints
/// it, which is the text MariaDB compares with `REQUIRE SUBJECT`.
///
/// Bytes outside printable ASCII become `\xHH` (so a unicode name appears as its escaped
/// UTF-8 bytes), and `/` and `+` are escaped with a backslash.
pub fn x509_oneline_subject(common_name: &str) -> String {
    let mut out = String::from("/CN=");
    for byte in common_name.bytes() {
        match byte {
            b'/' | b'+' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            b' '..=b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02X}")),
        }
    }
    out
}

/// A random positive 16-byte serial number.
pub(crate) fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generate(rcgen::Error::RingUnspecified))?;
    // Clear the top bit so the DER INTEGER stays positive, set the next so it keeps 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The current time without sub-second precision (X.509 times have whole seconds).
pub(crate) fn now_whole_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Letters, digits, `-` and `_` in dot-separated labels, optionally a leading `*.` wildcard.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_prefix("*.").unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn expiry_after(ttl: StdDuration) -> Result<OffsetDateTime> {
    let ttl = Duration::try_from(ttl)
        .map_err(|_| PkiError::InvalidName(format!("certificate lifetime {ttl:?} is too long")))?;
    now_whole_seconds()
        .checked_add(ttl)
        .ok_or_else(|| PkiError::InvalidName("certificate lifetime is too long".into()))
}

fn leaf_params(not_after: OffsetDateTime) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = now_whole_seconds() - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn common_name_only(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn sign_with_new_key(ca: &CertAuthority, params: CertificateParams) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (issuer, issuer_key) = ca.issuer()?;
    let cert = params.signed_by(&key, &issuer, &issuer_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn expect_kind(ca: &CertAuthority, kind: CaKind) -> Result<()> {
    if ca.kind == kind {
        Ok(())
    } else {
        Err(PkiError::CertificateRejected(format!(
            "this certificate must be signed by the {kind} CA, not the {} CA",
            ca.kind
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CaSet;
    use x509_parser::prelude::{parse_x509_certificate, GeneralName, X509Certificate};

    fn parsed<T>(pem: &str, check: impl FnOnce(&X509Certificate<'_>) -> T) -> Result<T> {
        let der = crate::parse_cert_pem(pem)?.remove(0);
        let (_, cert) = parse_x509_certificate(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok(check(&cert))
    }

    /// DER of a name that is exactly one RDN holding one CN attribute as a UTF8String.
    fn cn_only_name_der(cn: &str) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            crate::identity::push_der_length(&mut out, body.len());
            out.extend_from_slice(body);
            out
        }
        let oid_cn = [0x06, 0x03, 0x55, 0x04, 0x03];
        let attribute = tlv(0x30, &[&oid_cn[..], &tlv(0x0c, cn.as_bytes())].concat());
        tlv(0x30, &tlv(0x31, &attribute))
    }

    #[test]
    fn a_certificate_matches_only_the_key_it_was_issued_for() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let (key, csr) = new_key_and_csr("alice")?;
        let (other_key, _) = new_key_and_csr("mallory")?;
        let identity = Identity {
            username: "alice".into(),
            cluster: "prod".into(),
            usage: crate::CertUsage::Login,
            expires: OffsetDateTime::now_utc() + Duration::hours(1),
            route: None,
            pinned_ip: None,
            mfa_session_until: None,
        };
        let cert = issue_user_cert(&cas.user, &identity, &csr)?;
        assert!(cert_matches_key(&cert, &key));
        assert!(!cert_matches_key(&cert, &other_key));
        assert!(!cert_matches_key("not a certificate", &key));
        Ok(())
    }

    #[test]
    fn db_client_cert_subject_is_exactly_the_common_name() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        for user in ["alice", "o'brien", "john smith", "jürgen 名前", "a/b+c=d,e"] {
            let (cert, key) =
                issue_db_client_cert(&cas.db_client, user, StdDuration::from_secs(60))?;
            assert!(key.contains("PRIVATE KEY"));
            let (subject_der, cn) = parsed(&cert, |c| {
                let cn = c
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|a| a.as_str().ok());
                (c.subject().as_raw().to_vec(), cn.map(str::to_owned))
            })?;
            assert_eq!(subject_der, cn_only_name_der(user), "subject of {user:?}");
            assert_eq!(cn.as_deref(), Some(user));
        }
        Ok(())
    }

    #[test]
    fn db_client_cert_needs_the_db_client_ca_and_a_usable_name() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let ttl = StdDuration::from_secs(60);
        assert!(issue_db_client_cert(&cas.user, "alice", ttl).is_err());
        assert!(issue_db_client_cert(&cas.db_client, "", ttl).is_err());
        assert!(issue_db_client_cert(&cas.db_client, "a\0b", ttl).is_err());
        Ok(())
    }

    #[test]
    fn db_server_cert_puts_ips_and_names_in_their_own_sans() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let hosts = ["db1.internal", "10.0.0.7", "::1", "localhost"].map(String::from);
        let (cert, _key) = issue_db_server_cert(&cas.db, &hosts, StdDuration::from_secs(3600))?;
        let (cn, sans, issuer) = parsed(&cert, |c| {
            let cn = c
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok());
            let sans: Vec<String> = c
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .map(|name| match name {
                            GeneralName::DNSName(dns) => format!("dns:{dns}"),
                            GeneralName::IPAddress(ip) => format!("ip:{ip:02x?}"),
                            other => format!("other:{other:?}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (cn.map(str::to_owned), sans, c.issuer().to_string())
        })?;
        assert_eq!(cn.as_deref(), Some("db1.internal"));
        let ipv6_loopback = format!(
            "ip:{:02x?}",
            [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            sans,
            vec![
                "dns:db1.internal".to_owned(),
                format!("ip:{:02x?}", [10u8, 0, 0, 7]),
                ipv6_loopback,
                "dns:localhost".to_owned(),
            ]
        );
        assert_eq!(issuer, "CN=dbward db CA, O=prod");
        Ok(())
    }

    #[test]
    fn server_certs_need_their_ca_and_hosts() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let ttl = StdDuration::from_secs(60);
        let hosts = ["localhost".to_owned()];
        assert!(issue_db_server_cert(&cas.host, &hosts, ttl).is_err());
        assert!(issue_host_cert(&cas.db, &hosts, ttl).is_err());
        assert!(issue_db_server_cert(&cas.db, &[], ttl).is_err());
        assert!(issue_db_server_cert(&cas.db, &["bad host!".to_owned()], ttl).is_err());
        Ok(())
    }

    #[test]
    fn oneline_subject_escapes_like_openssl() {
        assert_eq!(x509_oneline_subject("alice"), "/CN=alice");
        assert_eq!(x509_oneline_subject("a/b+c d'e"), "/CN=a\\/b\\+c d'e");
        assert_eq!(x509_oneline_subject("ü"), "/CN=\\xC3\\xBC");
    }
}
