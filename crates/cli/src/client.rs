//! The HTTPS client of the gateway's web API.
//!
//! One TLS connection per request (the CLI makes a handful), HTTP/1.1, JSON bodies. The
//! gateway is trusted through its host CA (pinned with `--ca`, saved at login, or the admin
//! files in `data_dir`); `--insecure` skips verification for a first login only. The client
//! presents a certificate when it has one: the login certificate for user commands, the admin
//! identity for admin commands.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Errors talking to the gateway. `Api` carries the text the gateway chose to show.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Api(String),
    #[error("cannot reach the gateway at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the gateway at {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid gateway address {0:?}; expected HOST:PORT")]
    Address(String),
    #[error("TLS setup: {0}")]
    Config(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("unexpected answer from the gateway (HTTP {status}): {detail}")]
    Unexpected { status: u16, detail: String },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How the gateway's certificate is checked.
pub enum Trust {
    /// Chains to one of these CA certificates (PEM).
    Ca(String),
    /// Not checked at all.
    Insecure,
}

/// A client certificate and its key, both PEM.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct ApiClient {
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl ApiClient {
    pub fn new(addr: &str, trust: Trust, client_cert: Option<ClientCert>) -> Result<Self> {
        let (connect_addr, server_name) = split_addr(addr)?;
        let config = tls_config(trust, client_cert, b"http/1.1")?;
        Ok(Self {
            addr: connect_addr,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.request(Method::GET, path, None).await?;
        decode(&body)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Http(e.to_string()))?;
        let body = self.request(Method::POST, path, Some(json)).await?;
        decode(&body)
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.request(Method::DELETE, path, None).await.map(|_| ())
    }

    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| ClientError::Tls {
                addr: self.addr.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let driver = tokio::spawn(async move {
            // Errors surface through the response future; nothing to add here.
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.as_str())
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        driver.abort();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(error_from_body(status, &bytes))
    }
}

/// A TLS client configuration (ring provider) trusting `trust` and presenting `client_cert`.
pub fn tls_config(
    trust: Trust,
    client_cert: Option<ClientCert>,
    alpn: &[u8],
) -> Result<ClientConfig> {
    let (roots, verification) = match &trust {
        Trust::Ca(pem) => (Some(pem.as_str()), dbward_pki::ServerVerification::Full),
        Trust::Insecure => (None, dbward_pki::ServerVerification::Insecure),
    };
    let cert = client_cert
        .as_ref()
        .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
    let config = dbward_pki::client_config(roots, verification, cert)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| ClientError::Unexpected {
        status: 200,
        detail: e.to_string(),
    })
}

/// The gateway's `{"error": "..."}` text, or a description of what came instead.
fn error_from_body(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<dbward_server::api::ApiError>(body) {
        Ok(e) => ClientError::Api(e.error),
        Err(_) => ClientError::Unexpected {
            status: status.as_u16(),
            detail: String::from_utf8_lossy(body).chars().take(200).collect(),
        },
    }
}

/// `HOST:PORT` → the address to dial and the name to verify. An unspecified listen address
/// (`0.0.0.0`, `::`) is dialled on loopback.
pub fn split_addr(addr: &str) -> Result<(String, ServerName<'static>)> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        let ip = match sock.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        return Ok((
            SocketAddr::new(ip, sock.port()).to_string(),
            ServerName::IpAddress(ip.into()),
        ));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| ClientError::Address(addr.to_string()))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ClientError::Address(addr.to_string()));
    }
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| ClientError::Address(addr.to_string()))?;
    Ok((addr.to_string(), name))
}

/// Percent-encodes one path segment or query value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_dialled_on_loopback() -> Result<()> {
        let (addr, name) = split_addr("0.0.0.0:3080")?;
        assert_eq!(addr, "127.0.0.1:3080");
        assert_eq!(name.to_str(), "127.0.0.1");
        let (addr, name) = split_addr("localhost:3080")?;
        assert_eq!(addr, "localhost:3080");
        assert_eq!(name.to_str(), "localhost");
        let (addr, _) = split_addr("[::]:3080")?;
        assert_eq!(addr, "[::1]:3080");
        Ok(())
    }

    #[test]
    fn addresses_without_a_port_are_refused() {
        for bad in ["localhost", ":3080", "host:port", "host:99999"] {
            assert!(split_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_bodies_show_the_gateway_text() {
        let err = error_from_body(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid user name or password"}"#,
        );
        assert_eq!(err.to_string(), "invalid user name or password");
        let err = error_from_body(StatusCode::BAD_GATEWAY, b"<html>");
        assert!(err.to_string().contains("502"));
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(
            encode_component("db.session/start x"),
            "db.session%2Fstart%20x"
        );
    }

    /// A TLS server like the gateway's web listener: host certificate, client certificates
    /// required and checked against the user CA. Answers `/who` with the caller's user name
    /// and everything else with an API error.
    async fn serve_one_kind_of_request(cas: &dbward_pki::CaSet) -> anyhow::Result<String> {
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (cert, key) =
            dbward_pki::issue_host_cert(&cas.host, &hosts, std::time::Duration::from_secs(3600))?;
        let config = dbward_pki::server_config(
            &cert,
            &key,
            dbward_pki::ClientAuth::Required(cas.user.cert_der()?),
            &[b"http/1.1"],
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| dbward_pki::read_identity(c.as_ref()).ok())
                    .map(|id| id.username)
                    .unwrap_or_default();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let user = user.clone();
                        async move {
                            let (status, body) = if req.uri().path() == "/who" {
                                (StatusCode::OK, serde_json::json!({ "user": user }))
                            } else {
                                (
                                    StatusCode::FORBIDDEN,
                                    serde_json::json!({ "error": "not for you" }),
                                )
                            };
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body.to_string())))
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service),
                );
            }
        });
        Ok(addr)
    }

    fn alice_cert(cas: &dbward_pki::CaSet) -> anyhow::Result<ClientCert> {
        let (key_pem, csr_pem) = dbward_pki::new_key_and_csr("alice")?;
        let identity = dbward_pki::Identity {
            username: "alice".into(),
            cluster: "test".into(),
            usage: dbward_pki::CertUsage::Login,
            expires: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            route: None,
            pinned_ip: None,
            mfa_session_until: None,
        };
        let cert_pem = dbward_pki::issue_user_cert(&cas.user, &identity, &csr_pem)?;
        Ok(ClientCert { cert_pem, key_pem })
    }

    #[tokio::test]
    async fn client_presents_its_certificate_and_reads_api_errors() -> anyhow::Result<()> {
        let cas = dbward_pki::CaSet::generate("test")?;
        let addr = serve_one_kind_of_request(&cas).await?;
        let client = ApiClient::new(
            &addr,
            Trust::Ca(cas.host.cert_pem.clone()),
            Some(alice_cert(&cas)?),
        )?;
        let who: serde_json::Value = client.get("/who").await?;
        assert_eq!(who["user"], "alice");
        let err = client.get::<serde_json::Value>("/other").await.err();
        assert_eq!(err.map(|e| e.to_string()).as_deref(), Some("not for you"));
        Ok(())
    }

    #[tokio::test]
    async fn a_gateway_signed_by_another_ca_is_refused_unless_insecure() -> anyhow::Result<()> {
        let cas = dbward_pki::CaSet::generate("test")?;
        let other = dbward_pki::CaSet::generate("other")?;
        let addr = serve_one_kind_of_request(&cas).await?;
        let pinned_wrong = ApiClient::new(
            &addr,
            Trust::Ca(other.host.cert_pem.clone()),
            Some(alice_cert(&cas)?),
        )?;
        let err = pinned_wrong.get::<serde_json::Value>("/who").await.err();
        assert!(matches!(err, Some(ClientError::Tls { .. })), "{err:?}");
        let insecure = ApiClient::new(&addr, Trust::Insecure, Some(alice_cert(&cas)?))?;
        let who: serde_json::Value = insecure.get("/who").await?;
        assert_eq!(who["user"], "alice");
        Ok(())
    }
}
