//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay tests: each takes
//! arbitrary bytes, drives one parser that reads what a client sends, and must never panic.
//!
//! Each function is the whole of its fuzz target, so a crash found by the fuzzer replays
//! through exactly the same code in `tests/fuzz_corpus.rs` on stable Rust.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::mysql::packet::{self, AuthSwitch, ErrPacket, HandshakeResponse, HandshakeV10};
use crate::mysql::relay::{MysqlTap, PacketTap};
use crate::pg::messages::{self, ErrorFields, StartupPacket};
use crate::pg::relay::{FrameTap, TapEvent};
use crate::relay::{Filtered, TAP_SQL_LIMIT};
use crate::HandshakeLimits;

/// The PostgreSQL listener up to TLS, over `data` as the client's bytes: SSLRequest,
/// GSSENCRequest, CancelRequest, a plaintext StartupMessage or the first bytes of a direct
/// TLS ClientHello. `data` is also decoded as one startup packet body, the way the
/// StartupMessage read inside TLS is.
pub fn pg_startup(data: &[u8]) {
    if let Ok(StartupPacket::Startup(startup)) = messages::decode_startup_packet(data) {
        let extensions: Vec<String> = startup
            .params
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(messages::PROTOCOL_EXTENSION_PREFIX))
            .collect();
        let _ = messages::negotiate_protocol_version(0, &extensions);
    }
    block_on(async {
        let _ = crate::pg::accept(ClientBytes::new(data), no_certificate(), limits()).await;
    });
}

/// Typed PostgreSQL messages read back to back from `data`, with the ErrorResponse and
/// NoticeResponse fields decoded.
pub fn pg_messages(data: &[u8]) {
    block_on(async {
        let mut stream = data;
        while let Ok(message) = messages::read_message(&mut stream, 64 * 1024).await {
            if matches!(
                message.tag,
                messages::tag::ERROR_RESPONSE | messages::tag::NOTICE_RESPONSE
            ) {
                let _ = ErrorFields::decode(message.body());
            }
        }
    });
}

/// The PostgreSQL relay's frame tap over `data[1..]` as the client's byte stream, fed once
/// whole and once cut into chunks whose sizes follow from `data[0]`: both must report the
/// same messages and fail on the same one.
pub fn pg_relay_tap(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut tap = FrameTap::new();
        let mut events = Vec::new();
        let mut record = |event: TapEvent<'_>| events.push(describe_pg(event));
        let mut failed = false;
        for chunk in chunks {
            if tap.feed(chunk, &mut record).is_err() {
                failed = true;
                break;
            }
        }
        (events, failed)
    };
    let whole = run(&mut std::iter::once(stream));
    let chunked = run(&mut Chunks::new(stream, seed));
    // A message longer than the tap's limit is reported whole from a single chunk and cut
    // short when gathered; that difference is intended.
    if stream.len() <= TAP_SQL_LIMIT {
        assert_eq!(whole, chunked, "the tap depends on how the stream was cut");
    }
}

/// The MySQL listener up to TLS, over `data` as the client's bytes (after the gateway's
/// greeting): the SSLRequest or a plaintext handshake response, then the first bytes of the
/// ClientHello. Every packet framed in `data` is also decoded as each connection-phase
/// message the gateway reads, the HandshakeResponse41 a client sends inside TLS first.
pub fn mysql_handshake(data: &[u8]) {
    block_on(async {
        let greeting = crate::mysql::Greeting {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 1,
        };
        let _ = crate::mysql::accept(ClientBytes::new(data), no_certificate(), greeting, limits())
            .await;
        let mut stream = data;
        while let Ok(packet) = packet::read_packet(&mut stream, 64 * 1024).await {
            let payload = &packet.payload;
            if let Ok(response) = HandshakeResponse::decode(payload) {
                let _ = HandshakeResponse::decode(&response.encode());
            }
            let _ = HandshakeResponse::peek_capabilities(payload);
            if let Ok(greeting) = HandshakeV10::decode(payload) {
                let _ = greeting.encode();
            }
            let _ = ErrPacket::decode(payload);
            let _ = AuthSwitch::decode(payload);
            let _ = packet::ok_status(payload);
        }
    });
}

/// The MySQL relay's packet filter over `data[1..]` as the client's byte stream, fed once
/// whole and once cut into chunks whose sizes follow from `data[0]`: both must report the same
/// commands, forward the same bytes to the server and answer the client the same bytes.
pub fn mysql_relay_tap(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut tap = PacketTap::new();
        let mut events = Vec::new();
        let mut forwarded = Vec::new();
        let mut replies = Vec::new();
        let mut out = Filtered::default();
        let mut record = |event: MysqlTap<'_>| events.push(describe_mysql(event));
        for chunk in chunks {
            tap.feed(chunk, &mut record, &mut out);
            out.settle(chunk, &mut forwarded, &mut replies);
        }
        (events, forwarded, replies)
    };
    let whole = run(&mut std::iter::once(stream));
    let chunked = run(&mut Chunks::new(stream, seed));
    assert_eq!(whole, chunked, "the tap depends on how the stream was cut");
}

fn describe_pg(event: TapEvent<'_>) -> String {
    match event {
        TapEvent::Query { sql, truncated } => format!("Q {truncated} {sql}"),
        TapEvent::Parse {
            statement,
            sql,
            truncated,
        } => format!("P {truncated} {statement:?} {sql}"),
        TapEvent::FunctionCall { oid } => format!("F {oid}"),
        TapEvent::Terminate => "X".into(),
    }
}

fn describe_mysql(event: MysqlTap<'_>) -> String {
    match event {
        MysqlTap::Query { sql, truncated } => format!("Q {truncated} {sql}"),
        MysqlTap::Prepare { sql, truncated } => format!("P {truncated} {sql}"),
        MysqlTap::Quit => "X".into(),
        MysqlTap::Refused { command } => format!("R {command}"),
    }
}

/// Cuts a byte stream into chunks of 1 to 16 bytes, sizes drawn from a small generator
/// seeded by one input byte, the way reads from a socket may cut it anywhere.
struct Chunks<'a> {
    rest: &'a [u8],
    state: u32,
}

impl<'a> Chunks<'a> {
    fn new(rest: &'a [u8], seed: u8) -> Self {
        Chunks {
            rest,
            state: u32::from(seed) | 0x100,
        }
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let size = (self.state % 16 + 1) as usize;
        let (chunk, rest) = self.rest.split_at(size.min(self.rest.len()));
        self.rest = rest;
        Some(chunk)
    }
}

fn limits() -> HandshakeLimits {
    HandshakeLimits {
        timeout: Duration::from_secs(5),
        max_startup_len: messages::MAX_STARTUP_PACKET_LEN,
    }
}

/// A TLS server configuration that parses a ClientHello in full, then refuses it for want
/// of a certificate: no key is needed, and the fuzzer cannot get past the handshake anyway.
fn no_certificate() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("ring supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(NoCertificate));
            config.alpn_protocols = vec![messages::ALPN_POSTGRESQL.to_vec()];
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// Runs a future on this thread's runtime (time enabled for the handshake timeouts).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// A client connection whose bytes are `data`, then end of stream; what the gateway writes
/// is dropped.
struct ClientBytes<'a> {
    data: &'a [u8],
}

impl<'a> ClientBytes<'a> {
    fn new(data: &'a [u8]) -> Self {
        ClientBytes { data }
    }
}

impl AsyncRead for ClientBytes<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let take = buf.remaining().min(self.data.len());
        let (now, later) = self.data.split_at(take);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientBytes<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
