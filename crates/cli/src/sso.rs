//! The loopback end of `dbward login --auth`: a one-shot HTTP listener on 127.0.0.1 that the
//! gateway sends the browser to once the identity provider is done, with either the
//! certificate or the reason the login failed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dbward_server::api::SsoLoginResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head read from a browser.
const MAX_REQUEST_BYTES: usize = 32 << 10;
/// How long one browser connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one request to the loopback listener carried.
enum Callback {
    /// Not the callback (a favicon, another path, another login's state): answered and ignored.
    Ignored,
    Done(Result<SsoLoginResult, String>),
}

/// Waits up to `wait` for the browser to bring the gateway's answer for `client_state`.
pub async fn wait_for_callback(
    listener: TcpListener,
    client_state: &str,
    wait: Duration,
) -> Result<SsoLoginResult> {
    let deadline = tokio::time::Instant::now() + wait;
    // Each connection is served on its own, so one that sends nothing cannot hold up the
    // browser's.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Result<SsoLoginResult, String>>(1);
    loop {
        let (stream, _) = tokio::select! {
            accepted = tokio::time::timeout_at(deadline, listener.accept()) => accepted
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no answer from the browser within {} s; run `dbward login --auth` again",
                        wait.as_secs()
                    )
                })?
                .context("accepting the browser's connection")?,
            Some(done) = done_rx.recv() => match done {
                Ok(result) => return Ok(result),
                Err(message) => bail!("single sign-on login failed: {}", printable(&message)),
            },
        };
        let done_tx = done_tx.clone();
        let client_state = client_state.to_string();
        tokio::spawn(async move {
            if let Ok(Ok(Callback::Done(outcome))) =
                tokio::time::timeout(REQUEST_TIMEOUT, serve(stream, &client_state)).await
            {
                let _ = done_tx.send(outcome).await;
            }
        });
    }
}

/// Text from the network made safe for a terminal: no control characters (escape sequences).
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

async fn serve(mut stream: TcpStream, client_state: &str) -> Result<Callback> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Callback::Ignored);
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_BYTES {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "Request too large.",
            )
            .await;
            return Ok(Callback::Ignored);
        }
    }
    let text = String::from_utf8_lossy(&head);
    let target = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/callback" {
        respond(&mut stream, "404 Not Found", "Not found.").await;
        return Ok(Callback::Ignored);
    }
    let mut state = None;
    let mut response = None;
    let mut error = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "client_state" => state = Some(value.into_owned()),
            "response" => response = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            _ => {}
        }
    }
    if state.as_deref() != Some(client_state) {
        respond(
            &mut stream,
            "400 Bad Request",
            "This answer belongs to another login; it was ignored.",
        )
        .await;
        return Ok(Callback::Ignored);
    }
    if let Some(message) = error {
        respond(
            &mut stream,
            "200 OK",
            &format!("Login failed: {message}. You can close this window."),
        )
        .await;
        return Ok(Callback::Done(Err(message)));
    }
    let decoded = response
        .ok_or_else(|| "the gateway's answer has no certificate".to_string())
        .and_then(|r| URL_SAFE_NO_PAD.decode(r).map_err(|e| e.to_string()))
        .and_then(|bytes| {
            serde_json::from_slice::<SsoLoginResult>(&bytes).map_err(|e| e.to_string())
        });
    match decoded {
        Ok(result) => {
            respond(
                &mut stream,
                "200 OK",
                &format!(
                    "Logged in to dbward as {}. You can close this window and return to the terminal.",
                    result.user
                ),
            )
            .await;
            Ok(Callback::Done(Ok(result)))
        }
        Err(message) => {
            respond(
                &mut stream,
                "400 Bad Request",
                "The gateway's answer is unreadable.",
            )
            .await;
            Ok(Callback::Done(Err(format!(
                "the gateway's answer is unreadable: {message}"
            ))))
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>dbward</title></head><body><p>{}</p></body></html>",
        message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    );
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}
