//! The one error type of the PKI crate.
//!
//! Verification failures get their own variants (expired, bad signature, unknown issuer) so
//! callers can log a precise reason while showing the client a generic message.

use thiserror::Error;

/// Everything that can go wrong while creating, issuing, parsing or verifying certificates.
#[derive(Debug, Error)]
pub enum PkiError {
    /// Key generation, certificate construction or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// PEM text could not be decoded, or held no object of the expected kind.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A certificate's DER could not be parsed.
    #[error("invalid certificate: {0}")]
    Parse(String),
    /// A certificate signing request could not be parsed or its self-signature is wrong.
    #[error("invalid certificate signing request")]
    InvalidCsr,
    /// A host or name cannot be put into a certificate.
    #[error("invalid name for a certificate: {0}")]
    InvalidName(String),
    /// The certificate carries no dbward identity extension.
    #[error("certificate carries no dbward identity")]
    MissingIdentity,
    /// The identity extension exists but cannot be decoded or disagrees with the certificate.
    #[error("invalid identity in certificate: {0}")]
    InvalidIdentity(String),
    /// The identity extension was written by a newer format version.
    #[error("unsupported identity version {0}")]
    UnsupportedIdentityVersion(u64),
    /// The certificate's validity period ended before the verification time.
    #[error("certificate has expired")]
    CertificateExpired,
    /// The certificate's validity period starts after the verification time.
    #[error("certificate is not valid yet")]
    CertificateNotYetValid,
    /// The signature does not verify with the CA key: the certificate was altered or forged.
    #[error("certificate signature does not verify")]
    BadSignature,
    /// The certificate was not issued by the trusted CA.
    #[error("certificate was not issued by a trusted authority")]
    UnknownIssuer,
    /// Any other reason the certificate is not acceptable.
    #[error("certificate rejected: {0}")]
    CertificateRejected(String),
    /// Building a TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration asks for client certificates but names no CA to check them.
    #[error("client certificate authentication needs a client CA")]
    ClientCaRequired,
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// An unknown CA kind name.
    #[error("unknown CA type {0:?} (expected user, host, db or db-client)")]
    UnknownCaKind(String),
    /// Reading or writing a file failed.
    #[error("file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;
