//! rustls configurations for dbward's listeners (server side) and for its connections to
//! databases (client side), always with the `ring` provider.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

use crate::error::{PkiError, Result};
use crate::files::{parse_cert_pem, parse_key_pem};

/// Whether a listener asks for client certificates, and which CA they must chain to.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is requested.
    None,
    /// A client certificate is requested; when one is sent it must chain to this CA.
    Optional(CertificateDer<'static>),
    /// The handshake fails unless the client sends a certificate chaining to this CA.
    Required(CertificateDer<'static>),
}

/// How a database server's certificate is checked (`tls.mode` of a database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerVerification {
    /// `verify-full`: the chain must lead to a trusted root and the name must match.
    Full,
    /// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
    CaOnly,
    /// `insecure`: any certificate is accepted (the handshake signature is still checked, so
    /// the peer holds the key of the certificate it sent, whatever that is).
    Insecure,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration for a dbward listener: `cert_chain_pem` (leaf first) with its key,
/// client certificates per `client_auth`, and the ALPN protocols offered, in preference order.
pub fn server_config(
    cert_chain_pem: &str,
    key_pem: &str,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let chain = parse_cert_pem(cert_chain_pem)?;
    let key = parse_key_pem(key_pem)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots_of(ca)?, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::Required(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots_of(ca)?, provider)
                .build()
                .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration for connecting to a database.
///
/// `roots` is the PEM of the CAs trusted for the server (dbward's db CA unless the database
/// names its own `ca_cert_file`); `Full` and `CaOnly` fail without it. `client_cert` is (certificate chain PEM, key PEM) to
/// present, typically a db-client certificate `CN=<db user>`.
pub fn client_config(
    roots: Option<&str>,
    mode: ServerVerification,
    client_cert: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match mode {
        ServerVerification::Full => builder.with_root_certificates(root_store(roots)?),
        ServerVerification::CaOnly => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider)
                    .build()
                    .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier { inner }))
        }
        ServerVerification::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertVerifier {
                algorithms: provider.signature_verification_algorithms,
            })),
    };
    let config = match client_cert {
        Some((cert_pem, key_pem)) => {
            builder.with_client_auth_cert(parse_cert_pem(cert_pem)?, parse_key_pem(key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn roots_of(ca: CertificateDer<'static>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    Ok(Arc::new(roots))
}

fn root_store(roots_pem: Option<&str>) -> Result<RootCertStore> {
    match roots_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_cert_pem(pem)? {
                roots.add(cert)?;
            }
            Ok(roots)
        }
        None => Err(PkiError::Tls(rustls::Error::General(
            "verifying a database certificate needs a CA certificate".into(),
        ))),
    }
}

/// `verify-ca`: the full web PKI check except the server name.
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The name is checked only after the chain verified, so a name mismatch means
            // the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure`: accepts any certificate.
#[derive(Debug)]
struct AnyCertVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
