//! The gateway's HTTP client for an OpenID provider: discovery, keys, token and userinfo.
//!
//! One connection per request, HTTP/1.1, bounded in time and size. `https://` is verified with
//! the connector's CA certificates or, without them, the system's trusted CAs (the Mozilla set
//! built in where the system has no bundle); plain `http://` is
//! only ever used for an issuer on a loopback address (the connector's validation refuses
//! anything else, and every URL the provider's discovery names is checked again here).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest a provider may take to answer one request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read from a provider.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Where a provider's HTTPS certificate must chain to.
#[derive(Clone)]
pub struct ProviderTls {
    config: Arc<rustls::ClientConfig>,
}

impl ProviderTls {
    /// The connector's CA certificates (PEM), or the system's trusted CAs without them.
    pub fn new(ca_pem: Option<&str>) -> Result<ProviderTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                let certs = dbward_pki::parse_cert_pem(pem)
                    .map_err(|e| format!("the connector's CA certificates: {e}"))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("the connector's CA certificates: {e}"))?;
                }
            }
            None => {
                if let Some(certs) = system_roots() {
                    // A bundle may hold a certificate rustls cannot use; the rest still count.
                    let _ = roots.add_parsable_certificates(certs);
                }
                if roots.is_empty() {
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
        }
        if roots.is_empty() {
            return Err("the connector's CA certificates hold no certificate".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(dbward_pki::tls_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ProviderTls {
            config: Arc::new(config),
        })
    }
}

/// Where operating systems keep their bundle of trusted CA certificates (Debian and Ubuntu,
/// Fedora and RHEL, Alpine and macOS, openSUSE).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The system's trusted CA certificates: `SSL_CERT_FILE` when set, else the first bundle
/// found; `None` when there is none (the Mozilla set built in is used then).
fn system_roots() -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let candidates = from_env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from));
    for path in candidates {
        if let Ok(pem) = std::fs::read_to_string(&path) {
            if let Ok(certs) = dbward_pki::parse_cert_pem(&pem) {
                if !certs.is_empty() {
                    return Some(certs);
                }
            }
        }
    }
    None
}

/// A request to the provider.
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    /// `Authorization` header value.
    pub authorization: Option<String>,
    /// A form body (`application/x-www-form-urlencoded`).
    pub form: Option<String>,
}

impl<'a> Call<'a> {
    pub fn get(url: &'a str) -> Call<'a> {
        Call {
            method: Method::GET,
            url,
            authorization: None,
            form: None,
        }
    }
}

/// Sends one request; returns the status and the body.
pub async fn send(tls: &ProviderTls, call: Call<'_>) -> Result<(u16, Bytes), String> {
    tokio::time::timeout(REQUEST_TIMEOUT, send_inner(tls, &call))
        .await
        .map_err(|_| format!("{} did not answer within {REQUEST_TIMEOUT:?}", call.url))?
}

async fn send_inner(tls: &ProviderTls, call: &Call<'_>) -> Result<(u16, Bytes), String> {
    let url = ParsedUrl::parse(call.url)?;
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot reach {}: {e}", call.url))?;
    let _ = tcp.set_nodelay(true);
    let mut builder = Request::builder()
        .method(call.method.clone())
        .uri(url.path_and_query.as_str())
        .header(hyper::header::HOST, url.authority.as_str())
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, "dbward");
    if let Some(auth) = &call.authorization {
        builder = builder.header(hyper::header::AUTHORIZATION, auth.as_str());
    }
    let body = match &call.form {
        Some(form) => {
            builder = builder.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
            Bytes::from(form.clone())
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(Full::new(body))
        .map_err(|e| format!("request to {}: {e}", call.url))?;
    if url.tls {
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| format!("invalid host name in {}", call.url))?;
        let stream = TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", call.url))?;
        exchange(TokioIo::new(stream), request, call.url).await
    } else {
        exchange(TokioIo::new(tcp), request, call.url).await
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    request: Request<Full<Bytes>>,
    url: &str,
) -> Result<(u16, Bytes), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP with {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP with {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {url}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// The parts of an `http(s)://host[:port]/path?query` URL a request needs.
struct ParsedUrl {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
}

impl ParsedUrl {
    fn parse(url: &str) -> Result<ParsedUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("\"{url}\" is not an http(s) URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if !tls && !dbward_model::oidc::is_loopback_authority(authority) {
            return Err(format!(
                "\"{url}\" uses plain http, which is accepted only on a loopback address"
            ));
        }
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("\"{url}\" has no usable host"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("\"{url}\" has a broken IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("\"{url}\" has a bad port"))?,
                None => default_port,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (
                    host.to_string(),
                    p.parse().map_err(|_| format!("\"{url}\" has a bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        let path_and_query = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(ParsedUrl {
            tls,
            host,
            port,
            authority: authority.to_string(),
            path_and_query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_connector_ca_the_system_bundle_is_trusted() {
        // This machine's bundle (Debian's ca-certificates) is found and read.
        let roots = system_roots().expect("a system CA bundle");
        assert!(roots.len() > 10, "{} certificates", roots.len());
        ProviderTls::new(None).unwrap();
        // A connector CA that is not PEM is refused with a message.
        assert!(ProviderTls::new(Some("not a certificate")).is_err());
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        let u = ParsedUrl::parse("https://idp.example.com/oauth2/v1/keys?x=1").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("idp.example.com", 443));
        assert_eq!(u.path_and_query, "/oauth2/v1/keys?x=1");
        let u = ParsedUrl::parse("http://127.0.0.1:4444").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("127.0.0.1", 4444, "/")
        );
        let u = ParsedUrl::parse("https://[::1]:8443/token").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
    }

    #[test]
    fn plain_http_off_loopback_and_odd_urls_are_refused() {
        for url in [
            "http://idp.example.com/token",
            "http://127.0.0.1.nip.io/token",
            "ftp://idp.example.com",
            "https://user@idp.example.com/",
            "https:///token",
        ] {
            assert!(ParsedUrl::parse(url).is_err(), "{url}");
        }
    }
}
