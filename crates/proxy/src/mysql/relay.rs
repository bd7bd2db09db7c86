//! The relay for MySQL sessions: copies bytes both ways, taps the SQL the client sends, and
//! keeps from the server the commands that would change who the session is.
//!
//! Bytes are forwarded as soon as they are read, through one reused buffer per direction.
//! Client-to-server bytes also go through a packet tap that follows packet headers (3-byte
//! length and sequence id, split across reads included). A packet with sequence id 0 starts
//! a command; of those, `COM_QUERY`, `COM_STMT_PREPARE` and `COM_QUIT` are reported. Other
//! client packets (LOAD DATA LOCAL contents, whose sequence ids wrap from 255 to 0) continue
//! a command and are never mistaken for one. The tap sees a command before its last byte is
//! forwarded, so the audit record never trails the statement it describes.
//!
//! # Commands the gateway refuses
//!
//! The database user is the one dbward provisioned for the person; the session must stay
//! that user. [`refused_command`] lists the commands that would change that or that have no
//! business on a person's session, with the reason for each. Such a command is never
//! forwarded (not one byte of it: the header of a packet that may start a command is held
//! until its command byte is known); the client gets an ERR packet with the next sequence id,
//! exactly where the server's answer would be, so its connection stays usable, and the tap
//! reports [`MysqlTap::Refused`] for the audit. Every other command is relayed: the server
//! checks the user's privileges (`COM_SHUTDOWN`, `COM_PROCESS_KILL`, ...) as for any SQL,
//! and `COM_RESET_CONNECTION` keeps the user.

use tokio::io::{AsyncRead, AsyncWrite};

use super::packet::{command, frame, ErrPacket, MAX_PAYLOAD};
use crate::relay::{sql_text, Filtered};
pub use crate::relay::{RelayEnd, RelayStats, Side, TAP_SQL_LIMIT};

/// Error number of the gateway's refusal (`ER_SPECIFIC_ACCESS_DENIED_ERROR`): a plain
/// access error, which clients report and survive (an `08S01` would make them drop the
/// connection).
pub const REFUSED_COMMAND_CODE: u16 = 1227;
/// SQLSTATE of the gateway's refusal.
pub const REFUSED_COMMAND_SQLSTATE: &str = "42000";

/// The name of a command the gateway never forwards, or `None` for one it relays.
///
/// - `COM_CHANGE_USER` (0x11) would log the session in as another account.
/// - `COM_BINLOG_DUMP` (0x12), `COM_BINLOG_DUMP_GTID` (0x1e), `COM_REGISTER_SLAVE` (0x15)
///   and `COM_TABLE_DUMP` (0x13) make the session a replica: it would stream every change
///   of the server, whatever the user's roles say about the data.
/// - `COM_CONNECT_OUT` (0x14), `COM_DAEMON` (0x1d), `COM_CONNECT` (0x0b), `COM_TIME` (0x0f)
///   and `COM_DELAYED_INSERT` (0x10) are the server's own internal commands; no client sends
///   them. (`COM_SLEEP`, 0x00, is internal too but is relayed: the server answers it with an
///   error anyway, and a first byte of 0 is common in the data packets of LOAD DATA LOCAL.)
pub fn refused_command(command: u8) -> Option<&'static str> {
    Some(match command {
        0x0b => "COM_CONNECT",
        0x0f => "COM_TIME",
        0x10 => "COM_DELAYED_INSERT",
        0x11 => "COM_CHANGE_USER",
        0x12 => "COM_BINLOG_DUMP",
        0x13 => "COM_TABLE_DUMP",
        0x14 => "COM_CONNECT_OUT",
        0x15 => "COM_REGISTER_SLAVE",
        0x1d => "COM_DAEMON",
        0x1e => "COM_BINLOG_DUMP_GTID",
        _ => return None,
    })
}

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
    /// A command in [`refused_command`]: it was not forwarded and the client got an ERR.
    Refused {
        /// The command's name (`COM_CHANGE_USER`, ...).
        command: &'static str,
    },
}

/// The message of the ERR packet that refuses `command`.
pub fn refused_message(command: &str) -> String {
    format!("dbward does not relay {command}: the session keeps the database user it was opened as")
}

/// Relays between `client` and `server` until one of them closes or fails, calling `tap` for
/// every `COM_QUERY`, `COM_STMT_PREPARE` and `COM_QUIT` the client sends, and refusing the
/// commands of [`refused_command`] (reported to `tap` as [`MysqlTap::Refused`]).
///
/// When the client closes, the server's side is shut down and the server gets a few seconds
/// to finish; when the server closes, the client's side is shut down at once. Either way both
/// sides have been shut down when this returns.
pub async fn relay<C, S, F>(client: &mut C, server: &mut S, tap: F) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(MysqlTap<'_>),
{
    relay_with_idle_limit(client, server, None, tap).await
}

/// [`relay`], ending the session when the client sends nothing for `idle.after` (see
/// [`crate::relay::IdleLimit`]; [`idle_goodbye`] is the packet that says so).
pub async fn relay_with_idle_limit<C, S, F>(
    client: &mut C,
    server: &mut S,
    idle: Option<&crate::relay::IdleLimit>,
    mut tap: F,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(MysqlTap<'_>),
{
    let mut packets = PacketTap::new();
    crate::relay::relay_filtering(client, server, idle, |chunk, out| {
        packets.feed(chunk, &mut tap, out);
        Ok(())
    })
    .await
}

/// The ERR packet an idle client gets before the gateway closes its session: MySQL's own
/// ER_CLIENT_INTERACTION_TIMEOUT (4031), sent unprompted with sequence id 0 as MySQL 8 does
/// when `wait_timeout` ends a session.
pub fn idle_goodbye(message: &str) -> Vec<u8> {
    let err = ErrPacket {
        code: 4031,
        sqlstate: "HY000".into(),
        message: message.into(),
    };
    frame(0, &err.encode())
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
    /// The current logical packet is a refused command: none of it is forwarded.
    dropping: bool,
    /// Bytes of the current logical packet kept back until it is known whether it is a
    /// refused command (its header, at most 4 bytes).
    held: Vec<u8>,
    /// The previous logical packet carried data with sequence id 255: a packet with
    /// sequence id 0 continues that exchange (LOAD DATA LOCAL) rather than start a command.
    wraps: bool,
    /// Payload bytes seen of the current logical packet.
    logical_len: usize,
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
            dropping: false,
            held: Vec::new(),
            wraps: false,
            logical_len: 0,
            gathered: Vec::new(),
            truncated: false,
        }
    }

    /// Consumes the next chunk of the client's byte stream; what is to be forwarded and what
    /// the client is to be answered goes to `out`.
    pub(crate) fn feed<F>(&mut self, chunk: &[u8], tap: &mut F, out: &mut Filtered)
    where
        F: FnMut(MysqlTap<'_>),
    {
        let mut pos = 0;
        while pos < chunk.len() {
            let data = &chunk[pos..];
            if self.header_len < 4 {
                if self.header_len == 0 && !self.full_packet && data.len() >= 4 {
                    let len = payload_len(&data[..3]);
                    if len < MAX_PAYLOAD && data.len() >= 4 + len {
                        // A whole packet in this chunk: decided and reported at once.
                        let seq = data[3];
                        let starts_command = seq == 0 && !self.wraps && len > 0;
                        let refused = if starts_command {
                            refused_command(data[4])
                        } else {
                            None
                        };
                        if let Some(name) = refused {
                            edit(out, chunk, pos);
                            refuse(name, seq, tap, out);
                        } else {
                            pass(out, chunk, pos, pos + 4 + len);
                            if starts_command {
                                report(data[4], &data[5..4 + len], false, tap);
                            }
                        }
                        self.wraps = seq == 255 && len > 0;
                        pos += 4 + len;
                        continue;
                    }
                }
                let take = (4 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                if self.full_packet {
                    // The header of a physical packet that continues the current one.
                    if self.dropping {
                        edit(out, chunk, pos);
                    } else {
                        pass(out, chunk, pos, pos + take);
                    }
                } else {
                    edit(out, chunk, pos);
                    self.held.extend_from_slice(&data[..take]);
                }
                pos += take;
                if self.header_len == 4 && self.start_packet(chunk, pos, out) {
                    self.end_packet(tap, out);
                }
            } else {
                let take = self.remaining.min(data.len());
                let mut body = &data[..take];
                if self.expect_command && take > 0 {
                    let first = body[0];
                    self.command = Some(first);
                    self.expect_command = false;
                    body = &body[1..];
                    if refused_command(first).is_some() {
                        self.dropping = true;
                        self.held.clear();
                    } else {
                        self.release(chunk, pos, out);
                    }
                }
                if self.dropping {
                    edit(out, chunk, pos);
                } else {
                    pass(out, chunk, pos, pos + take);
                }
                self.logical_len += take;
                if matches!(self.command, Some(command::QUERY | command::STMT_PREPARE)) {
                    let room = TAP_SQL_LIMIT - self.gathered.len();
                    self.gathered
                        .extend_from_slice(&body[..body.len().min(room)]);
                    self.truncated |= body.len() > room;
                }
                self.remaining -= take;
                pos += take;
                if self.remaining == 0 {
                    self.end_packet(tap, out);
                }
            }
        }
    }

    /// Forwards the held header, now known not to start a refused command; `pos` is where
    /// the chunk has got to.
    fn release(&mut self, chunk: &[u8], pos: usize, out: &mut Filtered) {
        if !self.held.is_empty() {
            edit(out, chunk, pos);
            out.forward.append(&mut self.held);
        }
    }

    /// Takes in a complete header; `true` when the packet has no payload and so has ended.
    fn start_packet(&mut self, chunk: &[u8], pos: usize, out: &mut Filtered) -> bool {
        let len = payload_len(&self.header[..3]);
        let seq = self.header[3];
        if !self.full_packet {
            // A new logical packet: a command when its sequence id is 0, unless it continues
            // an exchange whose sequence ids wrapped.
            self.command = None;
            self.expect_command = seq == 0 && !self.wraps && len > 0;
            self.dropping = false;
            self.logical_len = 0;
            self.gathered.clear();
            self.truncated = false;
            if !self.expect_command {
                self.release(chunk, pos, out);
            }
        }
        self.full_packet = len == MAX_PAYLOAD;
        self.remaining = len;
        len == 0
    }

    fn end_packet<F>(&mut self, tap: &mut F, out: &mut Filtered)
    where
        F: FnMut(MysqlTap<'_>),
    {
        self.header_len = 0;
        if self.full_packet {
            return;
        }
        let seq = self.header[3];
        self.wraps = seq == 255 && self.logical_len > 0;
        if let Some(command) = self.command.take() {
            match refused_command(command).filter(|_| self.dropping) {
                Some(name) => refuse(name, seq, tap, out),
                None => report(command, &self.gathered, self.truncated, tap),
            }
        }
        self.dropping = false;
        self.expect_command = false;
        // Keep the buffer for the next command, unless an unusually large one grew it.
        if self.gathered.capacity() > 64 * 1024 {
            self.gathered = Vec::new();
        }
    }
}

/// From `pos` on, the chunk is no longer forwarded as read: what came before is copied to
/// `out.forward` and later bytes are added one by one with [`pass`].
fn edit(out: &mut Filtered, chunk: &[u8], pos: usize) {
    if !out.edited {
        out.edited = true;
        out.forward.extend_from_slice(&chunk[..pos]);
    }
}

/// Forwards `chunk[from..to]`.
fn pass(out: &mut Filtered, chunk: &[u8], from: usize, to: usize) {
    if out.edited {
        out.forward.extend_from_slice(&chunk[from..to]);
    }
}

/// Answers a refused command whose last packet had sequence id `seq` and reports it.
fn refuse<F>(name: &'static str, seq: u8, tap: &mut F, out: &mut Filtered)
where
    F: FnMut(MysqlTap<'_>),
{
    let err = ErrPacket {
        code: REFUSED_COMMAND_CODE,
        sqlstate: REFUSED_COMMAND_SQLSTATE.to_string(),
        message: refused_message(name),
    };
    out.reply
        .extend_from_slice(&frame(seq.wrapping_add(1), &err.encode()));
    tap(MysqlTap::Refused { command: name });
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
            let sql = sql_text(body);
            tap(MysqlTap::Query {
                sql: &sql,
                truncated,
            });
        }
        command::STMT_PREPARE => {
            let sql = sql_text(body);
            tap(MysqlTap::Prepare {
                sql: &sql,
                truncated,
            });
        }
        command::QUIT => tap(MysqlTap::Quit),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::packet::frame;
    use crate::testing;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn describe(event: MysqlTap<'_>) -> String {
        match event {
            MysqlTap::Query { sql, truncated } => format!("Q {sql} {truncated}"),
            MysqlTap::Prepare { sql, truncated } => format!("P {sql} {truncated}"),
            MysqlTap::Quit => "QUIT".into(),
            MysqlTap::Refused { command } => format!("REFUSED {command}"),
        }
    }

    /// Feeds `bytes` in chunks of `size`; the events, the bytes forwarded and the bytes
    /// answered to the client.
    fn filter(bytes: &[u8], size: usize) -> (Vec<String>, Vec<u8>, Vec<u8>) {
        let mut events = Vec::new();
        let mut forwarded = Vec::new();
        let mut replies = Vec::new();
        let mut tap = PacketTap::new();
        let mut out = Filtered::default();
        for chunk in bytes.chunks(size) {
            tap.feed(chunk, &mut |e| events.push(describe(e)), &mut out);
            out.settle(chunk, &mut forwarded, &mut replies);
        }
        (events, forwarded, replies)
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
        let bytes = conversation();
        let (events, forwarded, replies) = filter(&bytes, bytes.len());
        assert_eq!(events, expected());
        assert_eq!(forwarded, bytes);
        assert!(replies.is_empty());
    }

    #[test]
    fn tap_reports_commands_fed_in_any_chunking() {
        let bytes = conversation();
        for size in [1, 2, 3, 4, 5, 7, 13] {
            let (events, forwarded, replies) = filter(&bytes, size);
            assert_eq!(events, expected(), "chunks of {size}");
            assert_eq!(forwarded, bytes, "chunks of {size}");
            assert!(replies.is_empty());
        }
    }

    /// COM_CHANGE_USER as a client library sends it: user, auth data, database, charset,
    /// plugin.
    fn change_user_packet() -> Vec<u8> {
        let mut body = b"svc_app\0".to_vec();
        body.push(20);
        body.extend_from_slice(&[0x5a; 20]);
        body.extend_from_slice(b"\0\x2d\0mysql_native_password\0");
        command_packet(0x11, &body)
    }

    #[test]
    fn identity_and_replication_commands_are_never_forwarded_in_any_chunking() {
        for refused in [0x11u8, 0x12, 0x13, 0x14, 0x15, 0x1d, 0x1e] {
            let mut bytes = command_packet(command::QUERY, b"select 1");
            let forbidden = if refused == 0x11 {
                change_user_packet()
            } else {
                command_packet(refused, &[4, 0, 0, 0, 0, 0, 1, 0, 0, 0])
            };
            bytes.extend_from_slice(&forbidden);
            bytes.extend(command_packet(command::QUERY, b"select current_user()"));
            let mut allowed = command_packet(command::QUERY, b"select 1");
            allowed.extend(command_packet(command::QUERY, b"select current_user()"));
            let name = refused_command(refused).unwrap();
            for size in [1, 2, 3, 4, 5, 6, 7, 13, bytes.len()] {
                let (events, forwarded, replies) = filter(&bytes, size);
                assert_eq!(forwarded, allowed, "{name} in chunks of {size}");
                assert_eq!(
                    events,
                    [
                        "Q select 1 false".to_string(),
                        format!("REFUSED {name}"),
                        "Q select current_user() false".to_string()
                    ],
                    "{name} in chunks of {size}"
                );
                let mut reply = &replies[..];
                let err = block_on(crate::mysql::packet::read_packet(&mut reply, 1 << 20))
                    .expect("an ERR packet");
                assert!(reply.is_empty(), "one answer");
                assert_eq!(err.seq, 1, "answered where the server's answer would be");
                let err = ErrPacket::decode(&err.payload).unwrap();
                assert_eq!((err.code, err.sqlstate.as_str()), (1227, "42000"));
                assert!(err.message.contains(name), "{}", err.message);
            }
        }
    }

    #[test]
    fn load_data_packets_whose_sequence_wraps_are_not_taken_for_commands() {
        let mut bytes = command_packet(command::QUERY, b"load data local infile 'f' into table t");
        let mut load = Vec::new();
        // The file's packets run from sequence id 2 past 255 to 0 and on; the one with id 0
        // starts with the byte of COM_CHANGE_USER.
        for seq in 2..=255u8 {
            load.extend(frame(seq, b"1,2\n"));
        }
        load.extend(frame(0, b"\x11x,y\n"));
        load.extend(frame(1, &[]));
        bytes.extend_from_slice(&load);
        // The next seq-0 packet is a command again.
        bytes.extend(change_user_packet());
        let mut allowed =
            command_packet(command::QUERY, b"load data local infile 'f' into table t");
        allowed.extend_from_slice(&load);
        for size in [1, 3, 4, 5, 4096] {
            let (events, forwarded, replies) = filter(&bytes, size);
            assert_eq!(forwarded, allowed, "chunks of {size}");
            assert_eq!(
                events,
                [
                    "Q load data local infile 'f' into table t false",
                    "REFUSED COM_CHANGE_USER"
                ]
            );
            assert_eq!(replies[3], 1);
        }
    }

    /// Runs a future that never waits (reading from a slice).
    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
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
        let mut out = Filtered::default();
        let mut forwarded = Vec::new();
        for chunk in wire.chunks(crate::relay::COPY_BUFFER) {
            tap.feed(
                chunk,
                &mut |e| match e {
                    MysqlTap::Query { sql, truncated } => seen.push((sql.len(), truncated)),
                    other => panic!("unexpected {other:?}"),
                },
                &mut out,
            );
            out.settle(chunk, &mut forwarded, &mut Vec::new());
        }
        assert!(forwarded == wire, "every byte forwarded in order");
        assert_eq!(seen, [(TAP_SQL_LIMIT, true), (8, false)]);
    }

    #[tokio::test]
    async fn relay_forwards_bytes_unchanged_and_taps_split_packets() {
        let events =
            testing::relay_round_trip(&conversation(), 3, |mut client, mut server| async move {
                let mut events = Vec::new();
                let stats = relay(&mut client, &mut server, |e| events.push(describe(e))).await;
                (stats, events)
            })
            .await;
        assert_eq!(events, expected());
    }

    #[tokio::test]
    async fn relay_answers_a_refused_command_itself_and_the_session_goes_on() {
        let (mut app, mut client) = duplex(1024);
        let (mut server, mut db) = duplex(1024);
        let relay_task = tokio::spawn(async move {
            let mut events = Vec::new();
            let stats = relay(&mut client, &mut server, |e| events.push(describe(e))).await;
            (stats, events)
        });
        app.write_all(&change_user_packet()).await.unwrap();
        let answer = crate::mysql::packet::read_packet(&mut app, 1 << 20)
            .await
            .unwrap();
        assert_eq!(answer.seq, 1);
        assert_eq!(ErrPacket::decode(&answer.payload).unwrap().code, 1227);
        // The next command reaches the server and its answer the client.
        let query = command_packet(command::QUERY, b"select current_user()");
        app.write_all(&query).await.unwrap();
        let mut received = vec![0u8; query.len()];
        db.read_exact(&mut received).await.unwrap();
        assert_eq!(
            received, query,
            "the refused command never reached the server"
        );
        db.write_all(&frame(1, &[0, 0, 0, 2, 0, 0, 0]))
            .await
            .unwrap();
        let ok = crate::mysql::packet::read_packet(&mut app, 1 << 20)
            .await
            .unwrap();
        assert_eq!((ok.seq, ok.payload[0]), (1, 0));
        drop(app);
        let mut rest = Vec::new();
        db.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(db);
        let (stats, events) = relay_task.await.unwrap();
        assert_eq!(
            events,
            ["REFUSED COM_CHANGE_USER", "Q select current_user() false"]
        );
        assert_eq!(stats.client_to_server, query.len() as u64);
    }
}
