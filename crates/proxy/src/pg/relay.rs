//! The relay: copies an established session's bytes both ways, unchanged, and taps the SQL
//! the client sends for the audit log.
//!
//! Bytes are forwarded as soon as they are read, through one reused buffer per direction;
//! nothing is re-encoded. Client-to-server bytes also go through a [`FrameTap`], which follows
//! message boundaries (type byte and length, frames split across reads included) only to
//! report `Query`, `Parse` and `Terminate`. The tap sees a message before its last byte is
//! forwarded, so the audit record never trails the statement it describes.

use std::borrow::Cow;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::messages::tag;
use crate::error::ProxyError;

/// Size of each direction's copy buffer: one TLS record's worth of plaintext.
const COPY_BUFFER: usize = 16 * 1024;
/// SQL text longer than this reaches the tap cut short (and marked `truncated`); the bytes
/// themselves are always forwarded whole.
pub const TAP_SQL_LIMIT: usize = 1 << 20;
/// After the client has gone, how long the server may take to finish and close its side.
const DRAIN_AFTER_CLIENT_CLOSE: Duration = Duration::from_secs(5);
/// How long closing each side (TLS close_notify, then FIN) may take at the end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// A client message the relay reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapEvent<'a> {
    /// A simple-protocol `Query`.
    Query {
        /// The SQL text (invalid UTF-8 replaced).
        sql: &'a str,
        /// Whether `sql` was cut at [`TAP_SQL_LIMIT`].
        truncated: bool,
    },
    /// An extended-protocol `Parse`.
    Parse {
        /// The prepared statement's name; empty for the unnamed statement.
        statement: &'a str,
        /// The SQL text (invalid UTF-8 replaced).
        sql: &'a str,
        /// Whether the message was cut at [`TAP_SQL_LIMIT`].
        truncated: bool,
    },
    /// `Terminate`: the client is ending the session.
    Terminate,
}

/// One end of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client connection.
    Client,
    /// The database server connection.
    Server,
}

/// Why the relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// This side closed its connection first (an end of stream, with or without TLS
    /// close_notify).
    Closed(Side),
    /// Reading from or writing to this side failed, or (client only) it broke the message
    /// framing.
    Failed(Side, ProxyError),
}

/// What a finished relay did.
#[derive(Debug)]
pub struct RelayStats {
    /// Bytes read from the client and forwarded to the server.
    pub client_to_server: u64,
    /// Bytes read from the server and forwarded to the client.
    pub server_to_client: u64,
    /// Why it ended.
    pub end: RelayEnd,
}

/// Relays between `client` and `server` until one of them closes or fails, calling `tap` for
/// every `Query`, `Parse` and `Terminate` the client sends.
///
/// When the client closes, the server's side is shut down and the server gets a few seconds
/// to finish; when the server closes, the client's side is shut down at once. Either way both
/// sides have been shut down when this returns; the caller drops the streams.
pub async fn relay<C, S, F>(client: &mut C, server: &mut S, mut tap: F) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(TapEvent<'_>),
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let mut client_to_server = 0u64;
    let mut server_to_client = 0u64;

    let end = {
        let mut frames = FrameTap::new();
        let upstream = copy(
            &mut client_read,
            &mut server_write,
            Side::Client,
            &mut client_to_server,
            |chunk| frames.feed(chunk, &mut tap),
        );
        let downstream = copy(
            &mut server_read,
            &mut client_write,
            Side::Server,
            &mut server_to_client,
            |_| Ok(()),
        );
        tokio::pin!(upstream, downstream);
        tokio::select! {
            result = &mut upstream => match result {
                Ok(()) => {
                    // The server normally ends the backend and closes at once.
                    let _ = tokio::time::timeout(DRAIN_AFTER_CLIENT_CLOSE, &mut downstream).await;
                    RelayEnd::Closed(Side::Client)
                }
                Err(failed) => failed,
            },
            result = &mut downstream => match result {
                Ok(()) => RelayEnd::Closed(Side::Server),
                Err(failed) => failed,
            },
        }
    };

    // Whatever ended the relay, the other side must learn it too. A side already shut down
    // or gone only makes these fail, which changes nothing.
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, server_write.shutdown()).await;
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, client_write.shutdown()).await;

    RelayStats {
        client_to_server,
        server_to_client,
        end,
    }
}

/// Copies `from` (side `from_side`) to `to` until `from` ends, then shuts `to` down.
/// `inspect` sees each chunk before it is forwarded and may stop the copy.
async fn copy<R, W>(
    from: &mut R,
    to: &mut W,
    from_side: Side,
    copied: &mut u64,
    mut inspect: impl FnMut(&[u8]) -> Result<(), ProxyError>,
) -> Result<(), RelayEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to_side = match from_side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    let failed_to = |err: std::io::Error| RelayEnd::Failed(to_side, ProxyError::Io(err));
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // A TLS peer that closes without close_notify: for a database session that is
            // how many clients end, not an attack on the data already relayed.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(RelayEnd::Failed(from_side, ProxyError::Io(err))),
        };
        let chunk = &buf[..n];
        inspect(chunk).map_err(|err| RelayEnd::Failed(from_side, err))?;
        to.write_all(chunk).await.map_err(failed_to)?;
        to.flush().await.map_err(failed_to)?;
        *copied += n as u64;
    }
    to.shutdown().await.map_err(failed_to)?;
    Ok(())
}

/// Follows the framing of frontend messages across arbitrary chunk boundaries.
///
/// A message that arrives whole within one chunk is reported straight from that chunk; only
/// a `Query` or `Parse` split across chunks is gathered, into a buffer reused from message to
/// message.
#[derive(Debug)]
pub(crate) struct FrameTap {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message not yet seen.
    remaining: usize,
    /// Whether the current message is gathered for the tap.
    gathering: bool,
    gathered: Vec<u8>,
    truncated: bool,
}

impl FrameTap {
    pub(crate) fn new() -> Self {
        FrameTap {
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            gathering: false,
            gathered: Vec::new(),
            truncated: false,
        }
    }

    /// Consumes the next chunk of the client's byte stream.
    pub(crate) fn feed<F>(&mut self, mut data: &[u8], tap: &mut F) -> Result<(), ProxyError>
    where
        F: FnMut(TapEvent<'_>),
    {
        while !data.is_empty() {
            if self.header_len < 5 {
                if self.header_len == 0 && data.len() >= 5 {
                    let body_len = body_len([data[1], data[2], data[3], data[4]])?;
                    if let Some(body) = data.get(5..5 + body_len) {
                        report(data[0], body, false, tap);
                        data = &data[5 + body_len..];
                        continue;
                    }
                }
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == 5 {
                    let [message_tag, l0, l1, l2, l3] = self.header;
                    self.remaining = body_len([l0, l1, l2, l3])?;
                    self.gathering = matches!(message_tag, tag::QUERY | tag::PARSE);
                    self.gathered.clear();
                    self.truncated = false;
                    if self.remaining == 0 {
                        self.finish(tap);
                    }
                }
            } else {
                let take = self.remaining.min(data.len());
                if self.gathering {
                    let room = TAP_SQL_LIMIT - self.gathered.len();
                    self.gathered.extend_from_slice(&data[..take.min(room)]);
                    self.truncated |= take > room;
                }
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    self.finish(tap);
                }
            }
        }
        Ok(())
    }

    fn finish<F>(&mut self, tap: &mut F)
    where
        F: FnMut(TapEvent<'_>),
    {
        report(self.header[0], &self.gathered, self.truncated, tap);
        self.header_len = 0;
        // Keep the buffer for the next message, unless an unusually large one grew it.
        if self.gathered.capacity() > 64 * 1024 {
            self.gathered = Vec::new();
        }
    }
}

fn body_len(len: [u8; 4]) -> Result<usize, ProxyError> {
    let len = i32::from_be_bytes(len);
    if len < 4 {
        return Err(ProxyError::Protocol(format!(
            "invalid message length {len}"
        )));
    }
    Ok(len as usize - 4)
}

/// Reports one message to the tap if it is one the audit wants. `body` may be cut short
/// (`truncated`), so its closing NULs may be missing.
fn report<F>(message_tag: u8, body: &[u8], truncated: bool, tap: &mut F)
where
    F: FnMut(TapEvent<'_>),
{
    match message_tag {
        tag::QUERY => {
            let sql = text(cstr(body).0);
            tap(TapEvent::Query {
                sql: &sql,
                truncated,
            });
        }
        tag::PARSE => {
            let (statement, rest) = cstr(body);
            let (sql, _) = cstr(rest);
            let (statement, sql) = (text(statement), text(sql));
            tap(TapEvent::Parse {
                statement: &statement,
                sql: &sql,
                truncated,
            });
        }
        tag::TERMINATE => tap(TapEvent::Terminate),
        _ => {}
    }
}

/// Splits a C string off the front; without a NUL the whole input is the string.
fn cstr(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == 0) {
        Some(nul) => (&bytes[..nul], &bytes[nul + 1..]),
        None => (bytes, &[]),
    }
}

fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
