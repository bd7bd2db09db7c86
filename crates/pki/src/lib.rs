//! Certificates for dbward: the four cluster CAs, user certificates carrying a dbward identity,
//! listener and database certificates, and the rustls configurations built from them.
//!
//! Everything here uses rustls with the `ring` provider and ECDSA P-256 keys.

mod ca;
mod error;
mod files;
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod issue;
mod tls;
mod verify;

pub use ca::{CaKind, CaSet, CertAuthority};
pub use error::{PkiError, Result};
pub use files::{parse_cert_pem, parse_key_pem, write_private_file};
pub use identity::{
    read_identity, read_identity_and_claims, CertUsage, ClusterClaims, DbRoute, Identity,
    IDENTITY_EXTENSION_OID,
};
pub use issue::{
    cert_matches_key, check_csr, issue_db_client_cert, issue_db_server_cert, issue_host_cert,
    issue_user_cert, issue_user_cert_with_claims, new_key_and_csr, x509_oneline_subject,
};
pub use tls::{
    client_config, server_config, tls_provider, ClientAuth, ServerVerification, TrustedRoots,
    CIPHER_SUITES, PROTOCOL_VERSIONS,
};
pub use verify::{verify_user_cert, verify_user_cert_with_claims};

/// Re-exported so callers name the same DER types this crate takes and returns.
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};
