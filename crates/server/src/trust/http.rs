//! The gateway's own HTTPS client, for the calls one cluster makes to another (a leaf joining
//! its root, a root listing a leaf's databases): one TLS connection per call, HTTP/1.1, JSON.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why a call failed: `Refused` carries the other gateway's own error text and status.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    #[error("{0}")]
    Transport(String),
}

/// The host part of `HOST:PORT` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Calls `method path` on the gateway at `addr` with `tls`, sending `body` as JSON when given.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    body: Option<&Req>,
) -> Result<Resp, CallError> {
    tokio::time::timeout(CALL_TIMEOUT, call_inner(addr, tls, method, path, body))
        .await
        .map_err(|_| CallError::Transport(format!("{addr}: no answer in time")))?
}

async fn call_inner<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    body: Option<&Req>,
) -> Result<Resp, CallError> {
    let transport = |e: &dyn std::fmt::Display| CallError::Transport(format!("{addr}: {e}"));
    let server_name = ServerName::try_from(host_of(addr).to_string()).map_err(|e| transport(&e))?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| transport(&e))?;
    let stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| transport(&format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let payload = match body {
        Some(b) => serde_json::to_vec(b).map_err(|e| transport(&e))?,
        None => Vec::new(),
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| transport(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(&e))?;
    let status = response.status();
    let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| transport(&e))?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<crate::api::ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        // Passed on to root users: no terminal escapes, no megabytes.
        let message: String = message
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        return Err(CallError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| transport(&format!("answer: {e}")))
}
