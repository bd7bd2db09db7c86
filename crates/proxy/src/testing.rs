//! Certificates and TLS configurations for both engines' protocol tests: a throwaway CA, a
//! server certificate for `localhost` and `127.0.0.1`, and a client certificate for `alice`.

use std::future::Future;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::crypto::ring::default_provider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::relay::{RelayEnd, RelayStats, Side};

/// DER certificates with their PKCS#8 keys, and the PEM files a command-line client reads.
#[derive(Clone)]
pub(crate) struct Pki {
    pub ca: CertificateDer<'static>,
    pub server: (CertificateDer<'static>, Vec<u8>),
    pub client: (CertificateDer<'static>, Vec<u8>),
    /// `ca.pem`, `client.pem` and `client.key`, in that order.
    pub pem_files: [(&'static str, String); 3],
}

pub(crate) fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = name("test ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");

    let issue = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, &ca, &ca_key).expect("cert"), key)
    };
    let (server, server_key) = issue(
        vec!["localhost".into(), "127.0.0.1".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = issue(Vec::new(), "alice", ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: ca.der().clone(),
        server: (server.der().clone(), server_key.serialize_der()),
        client: (client.der().clone(), client_key.serialize_der()),
        pem_files: [
            ("ca.pem", ca.pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ],
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn key(der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("root");
    Arc::new(roots)
}

/// A listener configuration that requires a client certificate, as the gateway's does, and
/// offers the given ALPN protocols.
pub(crate) fn server_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let provider = Arc::new(default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki), provider.clone())
        .build()
        .expect("verifier");
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], key(&pki.server.1))
        .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client configuration presenting the `alice` certificate, with the given ALPN offer.
pub(crate) fn client_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(pki))
        .with_client_auth_cert(vec![pki.client.0.clone()], key(&pki.client.1))
        .expect("client config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub(crate) fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("name")
}

pub(crate) fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `relay` (given the gateway's client end and server end) between a client that sends
/// `sent` in pieces of `piece` bytes and then closes, and a server that reads everything,
/// answers `bye` and closes. Checks that every byte arrived unchanged both ways and that the
/// relay saw the client close first; returns what `relay` collected.
pub(crate) async fn relay_round_trip<F, Fut, E>(sent: &[u8], piece: usize, relay: F) -> E
where
    F: FnOnce(DuplexStream, DuplexStream) -> Fut,
    Fut: Future<Output = (RelayStats, E)> + Send + 'static,
    E: Send + 'static,
{
    let (mut app, client) = duplex(64);
    let (server, mut db) = duplex(64);
    let relay_task = tokio::spawn(relay(client, server));
    let db_side = tokio::spawn(async move {
        let mut received = Vec::new();
        db.read_to_end(&mut received).await.unwrap();
        // The client has gone; the server answers its last words and leaves.
        db.write_all(b"bye").await.unwrap();
        received
    });
    for bytes in sent.chunks(piece) {
        app.write_all(bytes).await.unwrap();
        app.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    app.shutdown().await.unwrap();
    let mut answer = Vec::new();
    app.read_to_end(&mut answer).await.unwrap();

    assert_eq!(db_side.await.unwrap(), sent, "the server got every byte");
    assert_eq!(answer, b"bye");
    let (stats, collected) = relay_task.await.unwrap();
    assert!(matches!(stats.end, RelayEnd::Closed(Side::Client)));
    assert_eq!(stats.client_to_server, sent.len() as u64);
    assert_eq!(stats.server_to_client, 3);
    collected
}
