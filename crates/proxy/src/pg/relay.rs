//! The relay: copies an established session's bytes both ways, unchanged, and taps the SQL
//! the client sends for the audit log.
//!
//! Bytes are forwarded as soon as they are read, through one reused buffer per direction;
//! nothing is re-encoded. Client-to-server bytes also go through a frame tap, which follows
//! message boundaries (type byte and length, frames split across reads included) only to
//! report `Query`, `Parse`, `FunctionCall` and `Terminate`. A fast-path `FunctionCall` runs a
//! function by OID with no SQL text (libpq's large-object calls use it); it is reported with
//! that OID so that the audit records it too. The tap sees a message before its last byte is
//! forwarded, so the audit record never trails the statement it describes.

use tokio::io::{AsyncRead, AsyncWrite};

use super::messages::{self, tag};
use crate::error::ProxyError;
use crate::relay::sql_text;
pub use crate::relay::{RelayEnd, RelayStats, Side, TAP_SQL_LIMIT};

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
    /// A fast-path `FunctionCall`.
    FunctionCall {
        /// The OID of the function called (0 when the message is too short to hold one).
        oid: u32,
    },
    /// `Terminate`: the client is ending the session.
    Terminate,
}

/// Relays between `client` and `server` until one of them closes or fails, calling `tap` for
/// every `Query`, `Parse`, `FunctionCall` and `Terminate` the client sends.
///
/// When the client closes, the server's side is shut down and the server gets a few seconds
/// to finish; when the server closes, the client's side is shut down at once. Either way both
/// sides have been shut down when this returns; the caller drops the streams.
pub async fn relay<C, S, F>(client: &mut C, server: &mut S, tap: F) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(TapEvent<'_>),
{
    relay_with_idle_limit(client, server, None, tap).await
}

/// [`relay`], ending the session when the client sends nothing for `idle.after` (see
/// [`crate::relay::IdleLimit`]; [`idle_goodbye`] is the message that says so).
pub async fn relay_with_idle_limit<C, S, F>(
    client: &mut C,
    server: &mut S,
    idle: Option<&crate::relay::IdleLimit>,
    mut tap: F,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(TapEvent<'_>),
{
    let mut frames = FrameTap::new();
    crate::relay::relay_filtering(client, server, idle, |chunk, _| {
        frames.feed(chunk, &mut tap)
    })
    .await
}

/// The ErrorResponse an idle client gets before the gateway closes its session: FATAL with
/// SQLSTATE 57P05 (`idle_session_timeout`), as PostgreSQL's own `idle_session_timeout` ends
/// a session.
pub fn idle_goodbye(message: &str) -> Vec<u8> {
    messages::error_response(messages::Severity::Fatal, "57P05", message).to_vec()
}

/// Follows the framing of frontend messages across arbitrary chunk boundaries.
///
/// A message that arrives whole within one chunk is reported straight from that chunk; only
/// a `Query` or `Parse` split across chunks is gathered (of a `FunctionCall`, its OID), into
/// a buffer reused from message to message.
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
                    let body_len = messages::body_len([data[1], data[2], data[3], data[4]])?;
                    if let Some(body) = data.get(5..5 + body_len) {
                        report(data[0], body, false, tap);
                        data = &data[5 + body_len..];
                        continue;
                    }
                }
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == 5 {
                    let [message_tag, l0, l1, l2, l3] = self.header;
                    self.remaining = messages::body_len([l0, l1, l2, l3])?;
                    self.gathering =
                        matches!(message_tag, tag::QUERY | tag::PARSE | tag::FUNCTION_CALL);
                    self.gathered.clear();
                    self.truncated = false;
                    if self.remaining == 0 {
                        self.finish(tap);
                    }
                }
            } else {
                let take = self.remaining.min(data.len());
                if self.gathering {
                    // A FunctionCall is reported by its OID, its first 4 bytes.
                    let limit = if self.header[0] == tag::FUNCTION_CALL {
                        4
                    } else {
                        TAP_SQL_LIMIT
                    };
                    let room = limit.saturating_sub(self.gathered.len());
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

/// Reports one message to the tap if it is one the audit wants. `body` may be cut short
/// (`truncated`), so its closing NULs may be missing.
fn report<F>(message_tag: u8, body: &[u8], truncated: bool, tap: &mut F)
where
    F: FnMut(TapEvent<'_>),
{
    match message_tag {
        tag::QUERY => {
            let sql = sql_text(messages::decode_query(body));
            tap(TapEvent::Query {
                sql: &sql,
                truncated,
            });
        }
        tag::PARSE => {
            let (statement, sql) = messages::decode_parse(body);
            let (statement, sql) = (sql_text(statement), sql_text(sql));
            tap(TapEvent::Parse {
                statement: &statement,
                sql: &sql,
                truncated,
            });
        }
        tag::FUNCTION_CALL => tap(TapEvent::FunctionCall {
            oid: messages::decode_function_call_oid(body),
        }),
        tag::TERMINATE => tap(TapEvent::Terminate),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn describe(event: TapEvent<'_>) -> String {
        match event {
            TapEvent::Query { sql, truncated } => format!("Q {sql} {truncated}"),
            TapEvent::Parse {
                statement,
                sql,
                truncated,
            } => format!("P [{statement}] {sql} {truncated}"),
            TapEvent::FunctionCall { oid } => format!("F {oid}"),
            TapEvent::Terminate => "X".into(),
        }
    }

    /// A client's conversation: a query, an extended-protocol round, a COPY payload that
    /// looks like a Query inside, and Terminate.
    fn conversation() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&messages::query("select 1"));
        bytes.extend_from_slice(&messages::parse("s1", "select $1::int"));
        // Bind, Describe, Execute, Sync: framed but not tapped.
        bytes.extend_from_slice(&[b'B', 0, 0, 0, 12, 0, b's', b'1', 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        let copy_data = messages::query("drop table t");
        bytes.push(b'd');
        bytes.extend_from_slice(&((copy_data.len() + 4) as i32).to_be_bytes());
        bytes.extend_from_slice(&copy_data);
        bytes.extend_from_slice(&messages::parse("", "select 'é'"));
        bytes.extend_from_slice(&messages::terminate());
        bytes
    }

    fn expected() -> Vec<String> {
        vec![
            "Q select 1 false".to_string(),
            "P [s1] select $1::int false".to_string(),
            "P [] select 'é' false".to_string(),
            "X".to_string(),
        ]
    }

    #[test]
    fn tap_reports_messages_fed_whole() {
        let mut events = Vec::new();
        let mut tap = FrameTap::new();
        tap.feed(&conversation(), &mut |e| events.push(describe(e)))
            .unwrap();
        assert_eq!(events, expected());
    }

    #[test]
    fn tap_reports_messages_fed_byte_by_byte() {
        let mut events = Vec::new();
        let mut tap = FrameTap::new();
        for byte in conversation() {
            tap.feed(&[byte], &mut |e| events.push(describe(e)))
                .unwrap();
        }
        assert_eq!(events, expected());
    }

    #[test]
    fn fast_path_function_calls_are_reported_by_oid_in_any_chunking() {
        // FunctionCall of OID 955 (lowrite) with two arguments, then a query.
        let mut bytes = vec![b'F'];
        let body: Vec<u8> = [
            &955u32.to_be_bytes()[..],
            &[0, 0],
            &[0, 2],
            &[0, 0, 0, 4, 0, 0, 0, 1],
            &[0, 0, 0, 3, b'a', b'b', b'c'],
            &[0, 0],
        ]
        .concat();
        bytes.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&messages::query("select 1"));
        for size in 1..=bytes.len() {
            let mut tap = FrameTap::new();
            let mut events = Vec::new();
            for chunk in bytes.chunks(size) {
                tap.feed(chunk, &mut |e| events.push(describe(e))).unwrap();
            }
            assert_eq!(events, ["F 955", "Q select 1 false"], "chunks of {size}");
        }
    }

    #[test]
    fn tap_reports_messages_fed_in_odd_chunks() {
        let bytes = conversation();
        for size in [2, 3, 6, 7, 13] {
            let mut events = Vec::new();
            let mut tap = FrameTap::new();
            for chunk in bytes.chunks(size) {
                tap.feed(chunk, &mut |e| events.push(describe(e))).unwrap();
            }
            assert_eq!(events, expected(), "chunks of {size}");
        }
    }

    #[test]
    fn tap_refuses_a_length_below_four() {
        let mut tap = FrameTap::new();
        assert!(matches!(
            tap.feed(&[b'Q', 0, 0, 0, 3], &mut |_| {}),
            Err(ProxyError::Protocol(_))
        ));
        let mut tap = FrameTap::new();
        tap.feed(&[b'Q', 0, 0], &mut |_| {}).unwrap();
        assert!(tap.feed(&[0, 1], &mut |_| {}).is_err());
    }

    #[test]
    fn tap_cuts_very_long_sql_and_says_so() {
        let sql = "x".repeat(TAP_SQL_LIMIT + 10);
        let message = messages::query(&sql);
        let mut seen = None;
        let mut tap = FrameTap::new();
        for chunk in message.chunks(crate::relay::COPY_BUFFER) {
            tap.feed(chunk, &mut |e| {
                if let TapEvent::Query { sql, truncated } = e {
                    seen = Some((sql.len(), truncated));
                }
            })
            .unwrap();
        }
        assert_eq!(seen, Some((TAP_SQL_LIMIT, true)));
    }

    #[tokio::test]
    async fn relay_forwards_bytes_unchanged_and_taps_split_frames() {
        let events =
            testing::relay_round_trip(&conversation(), 1, |mut client, mut server| async move {
                let mut events = Vec::new();
                let stats = relay(&mut client, &mut server, |e| events.push(describe(e))).await;
                (stats, events)
            })
            .await;
        assert_eq!(events, expected());
    }

    #[tokio::test]
    async fn relay_stops_on_broken_client_framing_before_forwarding_it() {
        let (mut app, mut client) = duplex(1024);
        let (mut server, mut db) = duplex(1024);
        let relay_task = tokio::spawn(async move { relay(&mut client, &mut server, |_| {}).await });
        app.write_all(&[b'Q', 0, 0, 0, 1]).await.unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(5), relay_task)
            .await
            .expect("relay ended")
            .unwrap();
        assert!(matches!(
            stats.end,
            RelayEnd::Failed(Side::Client, ProxyError::Protocol(_))
        ));
        let mut forwarded = Vec::new();
        db.read_to_end(&mut forwarded).await.unwrap();
        assert!(forwarded.is_empty());
    }
}
