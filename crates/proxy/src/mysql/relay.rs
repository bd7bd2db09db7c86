//! The relay for MySQL sessions: copies bytes both ways unchanged and taps the SQL the client
//! sends.
//!
//! Bytes are forwarded as soon as they are read, through one reused buffer per direction.
//! Client-to-server bytes also go through a packet tap that follows packet headers (3-byte
//! length and sequence id, split across reads included). A packet with sequence id 0 starts
//! a command; of those, `COM_QUERY`, `COM_STMT_PREPARE` and `COM_QUIT` are reported. Other
//! client packets (LOAD DATA LOCAL contents, authentication during COM_CHANGE_USER) continue
//! a command and are never mistaken for one. The tap sees a command before its last byte is
//! forwarded, so the audit record never trails the statement it describes.

use std::borrow::Cow;

use tokio::io::{AsyncRead, AsyncWrite};

use super::packet::{command, MAX_PAYLOAD};
use crate::pg::RelayStats;

/// SQL text longer than this reaches the tap cut short (and marked `truncated`); the bytes
/// themselves are always forwarded whole.
pub const TAP_SQL_LIMIT: usize = 1 << 20;

/// A client command the relay reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlTap<'a> {
    /// `COM_QUERY`.
    Query {
        /// The SQL text (invalid UTF-8 replaced).
        sql: &'a str,
        /// Whether `sql` was cut at [`TAP_SQL_LIMIT`].
        truncated: bool,
    },
    /// `COM_STMT_PREPARE`.
    Prepare {
        /// The SQL text (invalid UTF-8 replaced).
        sql: &'a str,
        /// Whether `sql` was cut at [`TAP_SQL_LIMIT`].
        truncated: bool,
    },
    /// `COM_QUIT`: the client is ending the session.
    Quit,
}

/// Relays between `client` and `server` until one of them closes or fails, calling `tap` for
/// every `COM_QUERY`, `COM_STMT_PREPARE` and `COM_QUIT` the client sends.
///
/// When the client closes, the server's side is shut down and the server gets a few seconds
/// to finish; when the server closes, the client's side is shut down at once. Either way both
/// sides have been shut down when this returns.
pub async fn relay<C, S, F>(client: &mut C, server: &mut S, mut tap: F) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(MysqlTap<'_>),
{
    let mut packets = PacketTap::new();
    crate::relay::relay_inspecting(client, server, |chunk| {
        packets.feed(chunk, &mut tap);
        Ok(())
    })
    .await
}

/// Follows client packet framing across arbitrary chunk boundaries.
///
/// A command that arrives whole within one chunk is reported straight from that chunk; only
/// a query split across chunks (or longer than one packet) is gathered, into a buffer reused
/// from command to command. MySQL framing has no invalid lengths, so feeding never fails.
#[derive(Debug)]
pub(crate) struct PacketTap {
    header: [u8; 4],
    header_len: usize,
    /// Payload bytes of the current physical packet not yet seen.
    remaining: usize,
    /// The current physical packet is [`MAX_PAYLOAD`] long: the next one continues it.
    full_packet: bool,
    /// The command of the current logical packet, once its first payload byte was seen;
    /// `None` also for packets that do not start a command.
    command: Option<u8>,
    /// The current logical packet starts a command and its first byte is still to come.
    expect_command: bool,
    gathered: Vec<u8>,
    truncated: bool,
}

impl PacketTap {
    pub(crate) fn new() -> Self {
        PacketTap {
            header: [0; 4],
            header_len: 0,
            remaining: 0,
            full_packet: false,
            command: None,
            expect_command: false,
            gathered: Vec::new(),
            truncated: false,
        }
    }

    /// Consumes the next chunk of the client's byte stream.
    pub(crate) fn feed<F>(&mut self, mut data: &[u8], tap: &mut F)
    where
        F: FnMut(MysqlTap<'_>),
    {
        while !data.is_empty() {
            if self.header_len < 4 {
                if self.header_len == 0 && !self.continuing() && data.len() >= 4 {
                    let len = payload_len(&data[..3]);
                    if len < MAX_PAYLOAD && data.len() >= 4 + len {
                        if data[3] == 0 && len > 0 {
                            report(data[4], &data[5..4 + len], false, tap);
                        }
                        data = &data[4 + len..];
                        continue;
                    }
                }
                let take = (4 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == 4 && self.start_packet() {
                    self.end_packet(tap);
                }
            } else {
                let mut take = self.remaining.min(data.len());
                if self.expect_command && take > 0 {
                    self.command = Some(data[0]);
                    self.expect_command = false;
                    data = &data[1..];
                    self.remaining -= 1;
                    take -= 1;
                }
                if matches!(self.command, Some(command::QUERY | command::STMT_PREPARE)) {
                    let room = TAP_SQL_LIMIT - self.gathered.len();
                    self.gathered.extend_from_slice(&data[..take.min(room)]);
                    self.truncated |= take > room;
                }
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    self.end_packet(tap);
                }
            }
        }
    }

    /// Whether the next physical packet continues the current logical one.
    fn continuing(&self) -> bool {
        self.full_packet
    }

    /// Takes in a complete header; `true` when the packet has no payload and so has ended.
    fn start_packet(&mut self) -> bool {
        let len = payload_len(&self.header[..3]);
        let seq = self.header[3];
        if !self.full_packet {
            // A new logical packet: a command when its sequence id is 0.
            self.command = None;
            self.expect_command = seq == 0;
            self.gathered.clear();
            self.truncated = false;
        }
        self.full_packet = len == MAX_PAYLOAD;
        self.remaining = len;
        len == 0
    }

    fn end_packet<F>(&mut self, tap: &mut F)
    where
        F: FnMut(MysqlTap<'_>),
    {
        self.header_len = 0;
        if self.full_packet {
            return;
        }
        if let Some(command) = self.command.take() {
            report(command, &self.gathered, self.truncated, tap);
        }
        self.expect_command = false;
        // Keep the buffer for the next command, unless an unusually large one grew it.
        if self.gathered.capacity() > 64 * 1024 {
            self.gathered = Vec::new();
        }
    }
}

fn payload_len(bytes: &[u8]) -> usize {
    usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16
}

/// Reports one command to the tap if the audit wants it.
fn report<F>(command: u8, body: &[u8], truncated: bool, tap: &mut F)
where
    F: FnMut(MysqlTap<'_>),
{
    let (body, truncated) = if body.len() > TAP_SQL_LIMIT {
        (&body[..TAP_SQL_LIMIT], true)
    } else {
        (body, truncated)
    };
    match command {
        command::QUERY => {
            let sql = text(body);
            tap(MysqlTap::Query {
                sql: &sql,
                truncated,
            });
        }
        command::STMT_PREPARE => {
            let sql = text(body);
            tap(MysqlTap::Prepare {
                sql: &sql,
                truncated,
            });
        }
        command::QUIT => tap(MysqlTap::Quit),
        _ => {}
    }
}

fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::packet::frame;
    use crate::pg::{RelayEnd, Side};
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn describe(event: MysqlTap<'_>) -> String {
        match event {
            MysqlTap::Query { sql, truncated } => format!("Q {sql} {truncated}"),
            MysqlTap::Prepare { sql, truncated } => format!("P {sql} {truncated}"),
            MysqlTap::Quit => "QUIT".into(),
        }
    }

    fn command_packet(command: u8, body: &[u8]) -> Vec<u8> {
        let mut payload = vec![command];
        payload.extend_from_slice(body);
        frame(0, &payload)
    }

    /// A client's conversation: a query, a prepare, an execute, a LOAD DATA LOCAL file whose
    /// contents look like a COM_QUERY (sequence id 2, so not a command), a ping, and quit.
    fn conversation() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(command_packet(command::QUERY, b"select 1"));
        bytes.extend(command_packet(command::STMT_PREPARE, b"select ?"));
        bytes.extend(command_packet(0x17, &[1, 0, 0, 0, 0, 1, 0, 0, 0]));
        bytes.extend(command_packet(
            command::QUERY,
            b"load data local infile 'f' into table t",
        ));
        let mut file = vec![command::QUERY];
        file.extend_from_slice(b"drop table t");
        bytes.extend(frame(2, &file));
        bytes.extend(frame(3, &[]));
        bytes.extend(command_packet(0x0e, &[]));
        bytes.extend(command_packet(command::QUERY, "select 'é'".as_bytes()));
        bytes.extend(command_packet(command::QUIT, &[]));
        bytes
    }

    fn expected() -> Vec<String> {
        vec![
            "Q select 1 false".to_string(),
            "P select ? false".to_string(),
            "Q load data local infile 'f' into table t false".to_string(),
            "Q select 'é' false".to_string(),
            "QUIT".to_string(),
        ]
    }

    #[test]
    fn tap_reports_commands_fed_whole() {
        let mut events = Vec::new();
        PacketTap::new().feed(&conversation(), &mut |e| events.push(describe(e)));
        assert_eq!(events, expected());
    }

    #[test]
    fn tap_reports_commands_fed_in_any_chunking() {
        let bytes = conversation();
        for size in [1, 2, 3, 4, 5, 7, 13] {
            let mut events = Vec::new();
            let mut tap = PacketTap::new();
            for chunk in bytes.chunks(size) {
                tap.feed(chunk, &mut |e| events.push(describe(e)));
            }
            assert_eq!(events, expected(), "chunks of {size}");
        }
    }

    #[test]
    fn tap_joins_a_query_longer_than_one_packet_and_cuts_it_at_the_limit() {
        let sql = vec![b'x'; MAX_PAYLOAD + 10];
        let mut payload = vec![command::QUERY];
        payload.extend_from_slice(&sql);
        let mut wire = Vec::new();
        wire.extend_from_slice(&[0xff, 0xff, 0xff, 0]);
        wire.extend_from_slice(&payload[..MAX_PAYLOAD]);
        let rest = &payload[MAX_PAYLOAD..];
        wire.extend_from_slice(&[rest.len() as u8, 0, 0, 1]);
        wire.extend_from_slice(rest);
        wire.extend(command_packet(command::QUERY, b"select 2"));
        let mut seen = Vec::new();
        let mut tap = PacketTap::new();
        for chunk in wire.chunks(crate::relay::COPY_BUFFER) {
            tap.feed(chunk, &mut |e| match e {
                MysqlTap::Query { sql, truncated } => seen.push((sql.len(), truncated)),
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(seen, [(TAP_SQL_LIMIT, true), (8, false)]);
    }

    #[tokio::test]
    async fn relay_forwards_bytes_unchanged_and_taps_split_packets() {
        let (mut app, mut client) = duplex(64);
        let (mut server, mut db) = duplex(64);
        let relay_task = tokio::spawn(async move {
            let mut events = Vec::new();
            let stats = relay(&mut client, &mut server, |e| events.push(describe(e))).await;
            (stats, events)
        });
        let sent = conversation();
        let db_side = tokio::spawn(async move {
            let mut received = Vec::new();
            db.read_to_end(&mut received).await.unwrap();
            db.write_all(b"bye").await.unwrap();
            received
        });
        for chunk in sent.chunks(3) {
            app.write_all(chunk).await.unwrap();
            app.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        app.shutdown().await.unwrap();
        let mut answer = Vec::new();
        app.read_to_end(&mut answer).await.unwrap();

        assert_eq!(db_side.await.unwrap(), sent);
        let (stats, events) = relay_task.await.unwrap();
        assert_eq!(events, expected());
        assert_eq!(answer, b"bye");
        assert!(matches!(stats.end, RelayEnd::Closed(Side::Client)));
        assert_eq!(stats.client_to_server, sent.len() as u64);
        assert_eq!(stats.server_to_client, 3);
    }

    #[tokio::test]
    async fn relay_ends_and_closes_the_client_when_the_server_goes() {
        let (mut app, mut client) = duplex(1024);
        let (mut server, mut db) = duplex(1024);
        let relay_task = tokio::spawn(async move { relay(&mut client, &mut server, |_| {}).await });
        app.write_all(&command_packet(command::QUERY, b"select sleep(1)"))
            .await
            .unwrap();
        let mut query = [0u8; 4];
        db.read_exact(&mut query).await.unwrap();
        db.write_all(&frame(1, &[0xff, 0x1d, 0x07])).await.unwrap();
        drop(db);
        let stats = tokio::time::timeout(Duration::from_secs(5), relay_task)
            .await
            .expect("relay ended")
            .unwrap();
        assert!(matches!(stats.end, RelayEnd::Closed(Side::Server)));
        let mut rest = Vec::new();
        app.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, frame(1, &[0xff, 0x1d, 0x07]));
    }
}
