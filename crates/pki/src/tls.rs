//! rustls configurations for dbward's listeners (server side) and for its connections to
//! databases (client side), always with the `ring` provider.
//!
//! TLS policy, the same on every listener and upstream connection: TLS 1.3 and 1.2 only, and
//! only ephemeral (EC)DHE key exchange with AEAD ciphers ([`CIPHER_SUITES`]). No RSA key
//! exchange, no CBC, no SHA-1 MACs, whatever a peer offers.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

use crate::error::{PkiError, Result};
use crate::files::{parse_cert_pem, parse_key_pem};
use crate::identity::read_identity;

/// Whether a listener asks for client certificates, and which CA they must chain to.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is requested.
    None,
    /// A client certificate is requested; when one is sent it must chain to this CA.
    Optional(CertificateDer<'static>),
    /// The handshake fails unless the client sends a certificate chaining to this CA.
    Required(CertificateDer<'static>),
    /// A dbward user certificate: it must chain to the user CA `ca` and carry an identity of
    /// `cluster`, or the handshake fails. With `required: false` a client may also send no
    /// certificate at all.
    UserCert {
        ca: CertificateDer<'static>,
        cluster: String,
        required: bool,
    },
    /// [`ClientAuth::UserCert`], and also the certificates of the root clusters this cluster
    /// trusts: each must chain to that root's user CA *and* carry that root's cluster name.
    /// The set is read at every handshake, so a trust removed refuses the next handshake.
    UserCertTrusting {
        ca: CertificateDer<'static>,
        cluster: String,
        required: bool,
        trusted: TrustedRoots,
    },
}

/// The root clusters whose users a leaf accepts: (root cluster name, its user CA), shared
/// between the listeners and whoever changes the trust.
#[derive(Debug, Clone, Default)]
pub struct TrustedRoots {
    roots: Arc<std::sync::RwLock<Vec<TrustedRoot>>>,
}

#[derive(Debug)]
struct TrustedRoot {
    cluster: String,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustedRoots {
    /// Replaces the set with `roots`: (root cluster name, user CA certificate PEM). A root
    /// whose CA does not parse is left out (and reported), never trusted more broadly.
    pub fn replace(&self, roots: &[(String, String)]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut built = Vec::new();
        for (cluster, pem) in roots {
            let verifier = (|| -> Result<Arc<dyn ClientCertVerifier>> {
                let mut store = RootCertStore::empty();
                for cert in parse_cert_pem(pem)? {
                    store.add(cert)?;
                }
                WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
                    .build()
                    .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))
            })();
            match verifier {
                Ok(verifier) => built.push(TrustedRoot {
                    cluster: cluster.clone(),
                    verifier,
                }),
                Err(err) => problems.push(format!("{cluster}: {err}")),
            }
        }
        *self.roots.write().unwrap_or_else(|p| p.into_inner()) = built;
        problems
    }

    /// The names of the trusted root clusters.
    pub fn clusters(&self) -> Vec<String> {
        self.read().iter().map(|r| r.cluster.clone()).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<TrustedRoot>> {
        self.roots.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a root's CA verifies the chain and the identity names that root.
    fn verifies(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<ClientCertVerified> {
        for root in self.read().iter() {
            let Ok(verified) = root
                .verifier
                .verify_client_cert(end_entity, intermediates, now)
            else {
                continue;
            };
            if matches!(read_identity(end_entity.as_ref()), Ok(identity) if identity.cluster == root.cluster)
            {
                return Some(verified);
            }
        }
        None
    }
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

/// The protocol versions dbward speaks.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The cipher suites dbward accepts, in preference order: TLS 1.3's AEAD suites, and for
/// TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305 (RSA certificates are allowed for
/// databases that have them, RSA key exchange is not).
pub static CIPHER_SUITES: &[rustls::SupportedCipherSuite] = {
    use rustls::crypto::ring::cipher_suite as cs;
    &[
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
};

/// The `ring` provider restricted to [`CIPHER_SUITES`] and elliptic-curve key exchange.
pub fn tls_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = CIPHER_SUITES.to_vec();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(provider)
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    tls_provider()
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
        .with_protocol_versions(PROTOCOL_VERSIONS)?;
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
        ClientAuth::UserCert {
            ca,
            cluster,
            required,
        } => builder.with_client_cert_verifier(Arc::new(ClusterCertVerifier {
            inner: chain_verifier(ca, required, provider)?,
            cluster,
            trusted: None,
        })),
        ClientAuth::UserCertTrusting {
            ca,
            cluster,
            required,
            trusted,
        } => builder.with_client_cert_verifier(Arc::new(ClusterCertVerifier {
            inner: chain_verifier(ca, required, provider)?,
            cluster,
            trusted: Some(trusted),
        })),
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
        .with_protocol_versions(PROTOCOL_VERSIONS)?;
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
        ServerVerification::Insecure => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertVerifier {
                    algorithms: provider.signature_verification_algorithms,
                }))
        }
    };
    let config = match client_cert {
        Some((cert_pem, key_pem)) => {
            builder.with_client_auth_cert(parse_cert_pem(cert_pem)?, parse_key_pem(key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Chain, validity and purpose checks against the user CA `ca`; without `required`, a client
/// may also send no certificate.
fn chain_verifier(
    ca: CertificateDer<'static>,
    required: bool,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots_of(ca)?, provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))
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

/// A client certificate verified by `inner` (chain, validity, purpose) whose identity must
/// also name this cluster: a certificate of another cluster fails the handshake.
#[derive(Debug)]
struct ClusterCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster: String,
    /// Root clusters whose users are accepted too, each only with its own name.
    trusted: Option<TrustedRoots>,
}

impl ClientCertVerifier for ClusterCertVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let refused =
            || rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(verified) => verified,
            Err(err) => {
                return self
                    .trusted
                    .as_ref()
                    .and_then(|t| t.verifies(end_entity, intermediates, now))
                    .ok_or(err)
            }
        };
        // Read only after the chain verified, so the identity is covered by the signature.
        match read_identity(end_entity.as_ref()) {
            Ok(identity) if identity.cluster == self.cluster => Ok(verified),
            _ => Err(refused()),
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
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CertUsage, Identity};
    use crate::issue::{
        issue_db_client_cert, issue_db_server_cert, issue_host_cert, issue_user_cert,
        new_key_and_csr,
    };
    use crate::{verify_user_cert, CaSet, CertAuthority};
    use std::time::Duration;
    use time::OffsetDateTime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn user_cert(ca: &CertAuthority, cluster: &str) -> Result<(String, String)> {
        let (key, csr) = new_key_and_csr("alice")?;
        let identity = Identity {
            username: "alice".into(),
            cluster: cluster.into(),
            usage: CertUsage::Login,
            expires: OffsetDateTime::now_utc() + time::Duration::hours(1),
            route: None,
            pinned_ip: None,
            mfa_session_until: None,
        };
        Ok((issue_user_cert(ca, &identity, &csr)?, key))
    }

    /// Runs one handshake over an in-memory pipe, the client sending "ping" and the server
    /// answering "pong"; returns the server's outcome (with the peer chain) and the client's.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (
        std::io::Result<Vec<CertificateDer<'static>>>,
        std::io::Result<Vec<u8>>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
            let peer = tls.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec();
            let mut ping = [0u8; 4];
            tls.read_exact(&mut ping).await?;
            tls.write_all(b"pong").await?;
            tls.shutdown().await?;
            Ok(peer)
        };
        let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other);
        let client_side = async move {
            let mut tls = TlsConnector::from(client).connect(name?, client_io).await?;
            tls.write_all(b"ping").await?;
            let mut pong = Vec::new();
            tls.read_to_end(&mut pong).await?;
            Ok(pong)
        };
        let both = async { tokio::join!(server_side, client_side) };
        match tokio::time::timeout(Duration::from_secs(10), both).await {
            Ok(results) => results,
            Err(_) => (
                Err(std::io::ErrorKind::TimedOut.into()),
                Err(std::io::ErrorKind::TimedOut.into()),
            ),
        }
    }

    fn listener(cas: &CaSet, client_auth: ClientAuth) -> Result<Arc<ServerConfig>> {
        let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (cert, key) = issue_host_cert(&cas.host, &hosts, Duration::from_secs(3600))?;
        server_config(&cert, &key, client_auth, &[b"postgresql"])
    }

    #[tokio::test]
    async fn required_client_auth_accepts_a_user_cert_of_the_user_ca() -> TestResult {
        let cas = CaSet::generate("prod")?;
        let server = listener(&cas, ClientAuth::Required(cas.user.cert_der()?))?;
        let (cert, key) = user_cert(&cas.user, "prod")?;
        let client = client_config(
            Some(&cas.host.cert_pem),
            ServerVerification::Full,
            Some((&cert, &key)),
        )?;
        let (server_result, client_result) = handshake(server, client, "localhost").await;
        let peer = server_result?;
        assert_eq!(client_result?, b"pong");
        let identity = verify_user_cert(&peer, &cas.user, "prod", OffsetDateTime::now_utc())?;
        assert_eq!(identity.username, "alice");
        Ok(())
    }

    #[tokio::test]
    async fn required_client_auth_refuses_a_cert_of_another_ca_or_none() -> TestResult {
        let cas = CaSet::generate("prod")?;
        let other = CaSet::generate("other")?;
        let server = listener(&cas, ClientAuth::Required(cas.user.cert_der()?))?;
        let (cert, key) = user_cert(&other.user, "prod")?;
        let client = client_config(
            Some(&cas.host.cert_pem),
            ServerVerification::Full,
            Some((&cert, &key)),
        )?;
        let (server_result, client_result) = handshake(server.clone(), client, "localhost").await;
        assert!(server_result.is_err(), "server accepted a foreign cert");
        assert!(client_result.is_err(), "client got data through");

        let anonymous = client_config(Some(&cas.host.cert_pem), ServerVerification::Full, None)?;
        let (server_result, _) = handshake(server, anonymous, "localhost").await;
        assert!(server_result.is_err(), "server accepted no cert");
        Ok(())
    }

    #[tokio::test]
    async fn user_cert_auth_refuses_another_cluster_at_the_handshake() -> TestResult {
        let cas = CaSet::generate("prod")?;
        let auth = |required| ClientAuth::UserCert {
            ca: cas.user.cert_der().expect("der"),
            cluster: "prod".into(),
            required,
        };
        for required in [true, false] {
            let server = listener(&cas, auth(required))?;
            for (cluster, accepted) in [("prod", true), ("staging", false)] {
                let (cert, key) = user_cert(&cas.user, cluster)?;
                let client = client_config(
                    Some(&cas.host.cert_pem),
                    ServerVerification::Full,
                    Some((&cert, &key)),
                )?;
                let (server_result, client_result) =
                    handshake(server.clone(), client, "localhost").await;
                assert_eq!(server_result.is_ok(), accepted, "{cluster} {required}");
                assert_eq!(client_result.is_ok(), accepted, "{cluster} {required}");
            }
        }
        let optional = listener(&cas, auth(false))?;
        let anonymous = client_config(Some(&cas.host.cert_pem), ServerVerification::Full, None)?;
        let (server_result, _) = handshake(optional, anonymous, "localhost").await;
        assert!(server_result?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn optional_client_auth_lets_anonymous_clients_in() -> TestResult {
        let cas = CaSet::generate("prod")?;
        let server = listener(&cas, ClientAuth::Optional(cas.user.cert_der()?))?;
        let client = client_config(Some(&cas.host.cert_pem), ServerVerification::Full, None)?;
        let (server_result, client_result) = handshake(server, client, "127.0.0.1").await;
        assert!(server_result?.is_empty());
        assert_eq!(client_result?, b"pong");
        Ok(())
    }

    #[tokio::test]
    async fn verification_modes_differ_on_name_and_chain() -> TestResult {
        let cas = CaSet::generate("prod")?;
        let other = CaSet::generate("other")?;
        // A database server certificate and dbward's db-client certificate, as in
        // `dbward auth sign --format db`.
        let (db_cert, db_key) = issue_db_server_cert(
            &cas.db,
            &["db.internal".to_owned()],
            Duration::from_secs(3600),
        )?;
        let server = server_config(
            &db_cert,
            &db_key,
            ClientAuth::Required(cas.db_client.cert_der()?),
            &[],
        )?;
        let (client_cert, client_key) =
            issue_db_client_cert(&cas.db_client, "alice", Duration::from_secs(60))?;
        let connect = |roots: String, mode, name: &'static str| {
            let server = server.clone();
            let (client_cert, client_key) = (client_cert.clone(), client_key.clone());
            async move {
                let client = client_config(Some(&roots), mode, Some((&client_cert, &client_key)))?;
                let (server_result, client_result) = handshake(server, client, name).await;
                server_result?;
                client_result?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
        };
        let ours = cas.db.cert_pem.clone();
        let theirs = other.db.cert_pem.clone();
        use ServerVerification::*;
        assert!(connect(ours.clone(), Full, "db.internal").await.is_ok());
        assert!(connect(ours.clone(), Full, "other.internal").await.is_err());
        assert!(connect(ours.clone(), CaOnly, "other.internal")
            .await
            .is_ok());
        assert!(connect(theirs.clone(), CaOnly, "db.internal")
            .await
            .is_err());
        assert!(connect(theirs, Insecure, "other.internal").await.is_ok());
        Ok(())
    }

    #[test]
    fn policy_allows_only_tls12_and_13_with_ecdhe_aead_suites() {
        let provider = tls_provider();
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
        assert_eq!(provider.cipher_suites.len(), CIPHER_SUITES.len());
        let versions: Vec<_> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(
            versions,
            [
                rustls::ProtocolVersion::TLSv1_3,
                rustls::ProtocolVersion::TLSv1_2
            ]
        );
    }

    #[test]
    fn verified_modes_need_a_ca() {
        assert!(client_config(None, ServerVerification::Full, None).is_err());
        assert!(client_config(None, ServerVerification::CaOnly, None).is_err());
        assert!(client_config(None, ServerVerification::Insecure, None).is_ok());
    }

    #[test]
    fn server_config_offers_the_given_alpn_protocols() -> Result<()> {
        let cas = CaSet::generate("prod")?;
        let config = listener(&cas, ClientAuth::None)?;
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
        Ok(())
    }
}
