//! Verifying a user certificate chain and reading the identity it carries.
//!
//! The web API (client certificate as bearer) and the database listeners call
//! [`verify_user_cert`] after the TLS handshake. The identity is read only from a leaf whose
//! signature chain to the user CA, validity window and client-auth purpose were checked, so
//! every identity field is covered by the CA's signature.

use std::time::Duration as StdDuration;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use time::OffsetDateTime;

use crate::ca::{CaKind, CertAuthority};
use crate::error::{PkiError, Result};
use crate::identity::{read_identity_and_claims, ClusterClaims, Identity};
use crate::tls::provider;

/// Verifies `chain` (leaf first) against the user CA at time `now` and returns the identity of
/// the leaf, which must belong to `cluster`.
pub fn verify_user_cert(
    chain: &[CertificateDer<'_>],
    user_ca: &CertAuthority,
    cluster: &str,
    now: OffsetDateTime,
) -> Result<Identity> {
    verify_user_cert_with_claims(chain, user_ca, cluster, now).map(|(identity, _)| identity)
}

/// [`verify_user_cert`] that also returns the certificate's cluster claims. A caller decides
/// whether the CA it passed is trusted to make them.
pub fn verify_user_cert_with_claims(
    chain: &[CertificateDer<'_>],
    user_ca: &CertAuthority,
    cluster: &str,
    now: OffsetDateTime,
) -> Result<(Identity, ClusterClaims)> {
    if user_ca.kind != CaKind::User {
        return Err(PkiError::CertificateRejected(format!(
            "user certificates are verified with the user CA, not the {} CA",
            user_ca.kind
        )));
    }
    let (leaf, intermediates) = chain.split_first().ok_or(PkiError::NoPeerCertificate)?;
    let mut roots = RootCertStore::empty();
    roots.add(user_ca.cert_der()?)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let seconds = u64::try_from(now.unix_timestamp())
        .map_err(|_| PkiError::CertificateRejected("verification time before 1970".into()))?;
    let now_unix = UnixTime::since_unix_epoch(StdDuration::from_secs(seconds));
    verifier
        .verify_client_cert(leaf, intermediates, now_unix)
        .map_err(verification_error)?;

    let (identity, claims) = read_identity_and_claims(leaf.as_ref())?;
    if identity.cluster != cluster {
        return Err(PkiError::CertificateRejected(format!(
            "certificate was issued for cluster {:?}, this is {cluster:?}",
            identity.cluster
        )));
    }
    Ok((identity, claims))
}

/// Maps webpki's reasons to this crate's precise variants.
fn verification_error(error: rustls::Error) -> PkiError {
    match error {
        rustls::Error::InvalidCertificate(reason) => match reason {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                PkiError::CertificateExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                PkiError::CertificateNotYetValid
            }
            CertificateError::BadSignature => PkiError::BadSignature,
            CertificateError::UnknownIssuer => PkiError::UnknownIssuer,
            other => PkiError::CertificateRejected(format!("{other:?}")),
        },
        other => PkiError::CertificateRejected(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CertUsage, DbRoute};
    use crate::issue::{issue_user_cert, new_key_and_csr};
    use crate::{parse_cert_pem, CaSet};
    use time::Duration;

    fn identity(expires: OffsetDateTime) -> Identity {
        Identity {
            username: "alice".into(),
            cluster: "prod".into(),
            usage: CertUsage::Db,
            expires,
            route: Some(DbRoute {
                service: "orders".into(),
                db_user: Some("alice".into()),
                db_name: Some("shop".into()),
                db_roles: vec!["reader".into(), "writer".into()],
            }),
            pinned_ip: None,
            mfa_session_until: None,
        }
    }

    fn issue(ca: &CertAuthority, identity: &Identity) -> Result<Vec<CertificateDer<'static>>> {
        let (_key, csr) = new_key_and_csr("ignored")?;
        parse_cert_pem(&issue_user_cert(ca, identity, &csr)?)
    }

    fn replace_once(der: &mut [u8], from: &[u8], to: &[u8]) {
        let at = der
            .windows(from.len())
            .position(|w| w == from)
            .unwrap_or_else(|| panic!("{:?} not in certificate", String::from_utf8_lossy(from)));
        der[at..at + to.len()].copy_from_slice(to);
    }

    #[test]
    fn pinned_ip_round_trips_as_version_2_and_unpinned_certs_stay_version_1() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let mut wanted = identity(now + Duration::hours(8));
        let unpinned = issue(&cas.user, &wanted)?;
        assert!(contains(unpinned[0].as_ref(), br#"{"v":1,"#));
        assert_eq!(
            verify_user_cert(&unpinned, &cas.user, "prod", now)?.pinned_ip,
            None
        );

        wanted.pinned_ip = Some("127.0.0.1".parse().expect("an address"));
        let pinned = issue(&cas.user, &wanted)?;
        assert!(contains(pinned[0].as_ref(), br#"{"v":2,"#));
        assert!(contains(pinned[0].as_ref(), br#""ip":"127.0.0.1""#));
        let got = verify_user_cert(&pinned, &cas.user, "prod", now)?;
        assert_eq!(got.pinned_ip, wanted.pinned_ip);
        Ok(())
    }

    #[test]
    fn mfa_mark_round_trips_as_version_3_and_other_versions_are_refused() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let mut wanted = identity(now + Duration::minutes(1));
        let login_end = now + Duration::hours(8);
        wanted.mfa_session_until = Some(login_end);
        for pin in [None, Some("127.0.0.1".parse().expect("an address"))] {
            wanted.pinned_ip = pin;
            let chain = issue(&cas.user, &wanted)?;
            assert!(contains(chain[0].as_ref(), br#"{"v":3,"#));
            let got = verify_user_cert(&chain, &cas.user, "prod", now)?;
            assert_eq!(got.pinned_ip, pin);
            assert_eq!(
                got.mfa_session_until.map(OffsetDateTime::unix_timestamp),
                Some(login_end.unix_timestamp())
            );
            assert_eq!(
                got.session_expires().unix_timestamp(),
                login_end.unix_timestamp()
            );
        }
        wanted.pinned_ip = None;
        let chain = issue(&cas.user, &wanted)?;
        // The payload is read without the signature check here, so edits reach the parser.
        for (version, unsupported) in [
            (&b"5"[..], true),
            (b"1", false),
            (b"2", false),
            (b"4", false),
        ] {
            let mut der = chain[0].to_vec();
            let mut to = br#"{"v":"#.to_vec();
            to.extend_from_slice(version);
            to.push(b',');
            replace_once(&mut der, br#"{"v":3,"#, &to);
            let err = crate::read_identity(&der).err();
            if unsupported {
                assert!(
                    matches!(err, Some(PkiError::UnsupportedIdentityVersion(5))),
                    "{err:?}"
                );
            } else {
                assert!(matches!(err, Some(PkiError::InvalidIdentity(_))), "{err:?}");
            }
        }
        // Without the mark, a database certificate's session ends with the certificate.
        wanted.mfa_session_until = None;
        let plain = issue(&cas.user, &wanted)?;
        assert!(contains(plain[0].as_ref(), br#"{"v":1,"#));
        let got = verify_user_cert(&plain, &cas.user, "prod", now)?;
        assert_eq!(got.session_expires(), got.expires);
        Ok(())
    }

    #[test]
    fn cluster_claims_round_trip_as_version_4_and_older_payloads_have_none() -> Result<()> {
        let cas = CaSet::generate("root")?;
        let now = OffsetDateTime::now_utc();
        let wanted = identity(now + Duration::hours(1));
        let claims = ClusterClaims {
            route_cluster: Some("leaf".into()),
            roles: vec!["dev".into()],
            traits: [("db_roles".to_string(), vec!["writer".to_string()])].into(),
        };
        let (_key, csr) = new_key_and_csr("ignored")?;
        let pem = crate::issue::issue_user_cert_with_claims(&cas.user, &wanted, &claims, &csr)?;
        let chain = parse_cert_pem(&pem)?;
        assert!(contains(chain[0].as_ref(), br#"{"v":4,"#));
        let (got, got_claims) = verify_user_cert_with_claims(&chain, &cas.user, "prod", now)?;
        assert_eq!(got.username, "alice");
        assert_eq!(got_claims, claims);
        // Empty claims write the older versions, which read back with none.
        let plain = issue(&cas.user, &wanted)?;
        assert!(contains(plain[0].as_ref(), br#"{"v":1,"#));
        let (_, none) = verify_user_cert_with_claims(&plain, &cas.user, "prod", now)?;
        assert!(none.is_empty());
        Ok(())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn user_cert_round_trips_identity_and_route() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let wanted = identity(now + Duration::hours(8));
        let chain = issue(&cas.user, &wanted)?;
        let got = verify_user_cert(&chain, &cas.user, "prod", now)?;
        assert_eq!(got.username, "alice");
        assert_eq!(got.usage, CertUsage::Db);
        assert_eq!(got.route, wanted.route);
        assert_eq!(
            got.expires.unix_timestamp(),
            wanted.expires.unix_timestamp()
        );
        Ok(())
    }

    #[test]
    fn altered_identity_extension_is_refused() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let chain = issue(&cas.user, &identity(now + Duration::hours(1)))?;
        let mut der = chain[0].to_vec();
        replace_once(
            &mut der,
            b"\"service\":\"orders\"",
            b"\"service\":\"secret\"",
        );
        let tampered = [CertificateDer::from(der)];
        let err = verify_user_cert(&tampered, &cas.user, "prod", now).err();
        assert!(matches!(err, Some(PkiError::BadSignature)), "{err:?}");
        Ok(())
    }

    #[test]
    fn flipped_signature_byte_is_refused() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let chain = issue(&cas.user, &identity(now + Duration::hours(1)))?;
        let mut der = chain[0].to_vec();
        // The certificate ends with the signature's last INTEGER; its last byte is a
        // signature byte whatever the DER lengths.
        if let Some(last) = der.last_mut() {
            *last ^= 0x01;
        }
        let tampered = [CertificateDer::from(der)];
        let err = verify_user_cert(&tampered, &cas.user, "prod", now).err();
        assert!(matches!(err, Some(PkiError::BadSignature)), "{err:?}");
        Ok(())
    }

    #[test]
    fn expired_and_not_yet_valid_certs_are_refused() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let chain = issue(&cas.user, &identity(now + Duration::hours(1)))?;
        let later = verify_user_cert(&chain, &cas.user, "prod", now + Duration::hours(2)).err();
        assert!(
            matches!(later, Some(PkiError::CertificateExpired)),
            "{later:?}"
        );
        let earlier = verify_user_cert(&chain, &cas.user, "prod", now - Duration::hours(1)).err();
        assert!(
            matches!(earlier, Some(PkiError::CertificateNotYetValid)),
            "{earlier:?}"
        );
        Ok(())
    }

    #[test]
    fn cert_from_another_ca_is_refused() -> Result<()> {
        let ours = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        // Another cluster's CA has another name: no issuer is found.
        let elsewhere = CaSet::generate("elsewhere")?;
        let chain = issue(&elsewhere.user, &identity(now + Duration::hours(1)))?;
        let err = verify_user_cert(&chain, &ours.user, "prod", now).err();
        assert!(matches!(err, Some(PkiError::UnknownIssuer)), "{err:?}");
        // A CA of the same name (a reinstalled cluster) is found by name but its key differs.
        let same_name = CaSet::generate("prod")?;
        let chain = issue(&same_name.user, &identity(now + Duration::hours(1)))?;
        let err = verify_user_cert(&chain, &ours.user, "prod", now).err();
        assert!(matches!(err, Some(PkiError::BadSignature)), "{err:?}");
        Ok(())
    }

    #[test]
    fn cert_of_another_cluster_is_refused() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let chain = issue(&cas.user, &identity(now + Duration::hours(1)))?;
        let err = verify_user_cert(&chain, &cas.user, "staging", now).err();
        assert!(
            matches!(err, Some(PkiError::CertificateRejected(_))),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn empty_chain_and_non_user_ca_are_refused() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let now = OffsetDateTime::now_utc();
        let none = verify_user_cert(&[], &cas.user, "prod", now).err();
        assert!(
            matches!(none, Some(PkiError::NoPeerCertificate)),
            "{none:?}"
        );
        let chain = issue(&cas.user, &identity(now + Duration::hours(1)))?;
        assert!(verify_user_cert(&chain, &cas.host, "prod", now).is_err());
        Ok(())
    }

    #[test]
    fn self_made_cert_with_identity_extension_is_refused() -> Result<()> {
        // A certificate whose issuer name equals the user CA's but is signed by another key.
        let cas = CaSet::generate("prod")?;
        let mut forged_ca = CertAuthority::generate(CaKind::User, "prod")?;
        forged_ca.cert_pem = {
            // Same subject as the real CA, different key.
            let key = rcgen::KeyPair::from_pem(&forged_ca.key_pem)?;
            let params = rcgen::CertificateParams::from_ca_cert_pem(&cas.user.cert_pem)?;
            params.self_signed(&key)?.pem()
        };
        let now = OffsetDateTime::now_utc();
        let chain = issue(&forged_ca, &identity(now + Duration::hours(1)))?;
        let err = verify_user_cert(&chain, &cas.user, "prod", now).err();
        assert!(
            matches!(err, Some(PkiError::BadSignature | PkiError::UnknownIssuer)),
            "{err:?}"
        );
        Ok(())
    }
}
