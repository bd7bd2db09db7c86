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
use crate::identity::{read_identity, Identity};
use crate::tls::provider;

/// Verifies `chain` (leaf first) against the user CA at time `now` and returns the identity of
/// the leaf, which must belong to `cluster`.
pub fn verify_user_cert(
    chain: &[CertificateDer<'_>],
    user_ca: &CertAuthority,
    cluster: &str,
    now: OffsetDateTime,
) -> Result<Identity> {
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

    let identity = read_identity(leaf.as_ref())?;
    if identity.cluster != cluster {
        return Err(PkiError::CertificateRejected(format!(
            "certificate was issued for cluster {:?}, this is {cluster:?}",
            identity.cluster
        )));
    }
    Ok(identity)
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
