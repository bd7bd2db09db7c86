//! The engine-independent relay: copies an established session's bytes both ways, unchanged,
//! through one reused buffer per direction, letting the engine's tap inspect what the client
//! sends, and says how the session ended ([`RelayStats`]).
//!
//! `pg::relay` and `mysql::relay` put their protocol's framing tap on top; MySQL's tap is
//! also a filter that keeps a few commands from the server and answers them itself. Nothing
//! here knows a protocol's framing.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;

/// SQL text longer than this reaches an engine's tap cut short (and marked `truncated`); the
/// bytes themselves are always forwarded whole.
pub const TAP_SQL_LIMIT: usize = 1 << 20;

/// One end of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client connection.
    Client,
    /// The database server connection.
    Server,
}

/// How long the client may stay silent, and what it is told when it did.
#[derive(Debug, Clone)]
pub struct IdleLimit {
    /// The longest the client may send nothing.
    pub after: Duration,
    /// Written to the client before both sides are closed: the protocol's error message
    /// saying why. It goes between two writes of server bytes, never inside one, unless the
    /// client has stopped reading too (then it is tried for a few seconds after the unwritten
    /// rest); a server message still arriving in pieces (a client idle while a long result
    /// streams) is cut short, which a client that is being disconnected anyway reports as it
    /// can.
    pub goodbye: Vec<u8>,
}

/// Why the relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent nothing for the [`IdleLimit`]; it was told so and both sides were
    /// closed.
    Idle(Duration),
    /// This side closed its connection first (an end of stream, with or without TLS
    /// close_notify).
    Closed(Side),
    /// Reading from or writing to this side failed, or (client only) it broke the protocol's
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

/// Size each direction's copy buffer starts at. Idle sessions hold two of these, and most
/// statements and small results fit in one read of it. A read that fills it doubles it,
/// up to [`BULK_BUFFER`], so a direction sized by its own largest reads: a bulk transfer
/// reaches the largest in four reads and then moves in fewer, larger reads and writes.
pub(crate) const COPY_BUFFER: usize = 4 * 1024;
/// The largest a copy buffer grows to.
const BULK_BUFFER: usize = 64 * 1024;
/// After the client has gone, how long the server may take to finish and close its side.
const DRAIN_AFTER_CLIENT_CLOSE: Duration = Duration::from_secs(5);
/// How long closing each side (TLS close_notify, then FIN) may take at the end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Relays between `client` and `server` until one of them closes or fails; `inspect` sees
/// every chunk the client sends before it is forwarded and may stop the relay.
///
/// When the client closes, the server's side is shut down and the server gets a few seconds
/// to finish; when the server closes, the client's side is shut down at once. Either way both
/// sides have been shut down when this returns; the caller drops the streams.
pub(crate) async fn relay_inspecting<C, S>(
    client: &mut C,
    server: &mut S,
    mut inspect: impl FnMut(&[u8]) -> Result<(), ProxyError>,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    relay_filtering(client, server, None, |chunk, _| inspect(chunk)).await
}

/// What a client-side filter made of one chunk. Reused from chunk to chunk; the relay clears
/// it after acting on it.
#[derive(Debug, Default)]
pub(crate) struct Filtered {
    /// `false`: forward the chunk as read. `true`: forward [`Filtered::forward`] instead
    /// (possibly nothing: the filter holds bytes back or drops them).
    pub(crate) edited: bool,
    /// The bytes to forward when `edited`.
    pub(crate) forward: Vec<u8>,
    /// Bytes the gateway answers the client itself (a refusal of a command it does not
    /// forward). They are written between two writes of server bytes, never inside one.
    pub(crate) reply: Vec<u8>,
}

impl Filtered {
    /// Does with the verdict on `chunk` what the relay does, into buffers instead of
    /// sockets: what is forwarded goes to `forwarded`, the gateway's answers to `replies`.
    /// For the fuzz targets and tests, which run a filter without a relay.
    pub(crate) fn settle(&mut self, chunk: &[u8], forwarded: &mut Vec<u8>, replies: &mut Vec<u8>) {
        if self.edited {
            forwarded.append(&mut self.forward);
        } else {
            forwarded.extend_from_slice(chunk);
        }
        replies.append(&mut self.reply);
        self.edited = false;
    }
}

/// SQL text as the taps report it: invalid UTF-8 is replaced, never refused.
pub(crate) fn sql_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Most gateway answers queued for the client; a client that sends refused commands
/// without reading the answers is slowed down rather than buffered for.
const QUEUED_REPLIES: usize = 8;

/// [`relay_inspecting`] with a filter that may also hold back or drop client bytes and
/// answer the client itself (through [`Filtered`]), and with an optional [`IdleLimit`] on the
/// client: only what the client sends counts as activity, as in Teleport (a client waiting
/// for a long statement's result is idle).
pub(crate) async fn relay_filtering<C, S, F>(
    client: &mut C,
    server: &mut S,
    idle: Option<&IdleLimit>,
    filter: F,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&[u8], &mut Filtered) -> Result<(), ProxyError>,
{
    let mut relay = Relay {
        client,
        server,
        filter,
        filtered: Filtered::default(),
        up: Pipe::new(),
        client_done: false,
        waits_for_room: false,
        down: Pipe::new(),
        server_done: false,
        replies: VecDeque::new(),
        reply_pos: 0,
        silence: idle.map(|limit| Silence::new(limit.after)),
        client_to_server: 0,
        server_to_client: 0,
    };
    let end = match std::future::poll_fn(|cx| relay.poll_both(cx)).await {
        Some(end) => end,
        None => {
            // The server normally ends the session and closes at once.
            let draining = std::future::poll_fn(|cx| relay.poll_drain(cx));
            let _ = tokio::time::timeout(DRAIN_AFTER_CLIENT_CLOSE, draining).await;
            RelayEnd::Closed(Side::Client)
        }
    };
    let Relay {
        client,
        server,
        client_to_server,
        server_to_client,
        ..
    } = relay;

    if let (RelayEnd::Idle(_), Some(limit)) = (&end, idle) {
        let telling = async {
            client.write_all(&limit.goodbye).await?;
            client.flush().await
        };
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, telling).await;
    }
    // Whatever ended the relay, the other side must learn it too. A side already shut down
    // or gone only makes these fail, which changes nothing.
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, server.shutdown()).await;
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, client.shutdown()).await;

    RelayStats {
        client_to_server,
        server_to_client,
        end,
    }
}

/// Both directions of one session, driven by hand from one task: each stream is used
/// through `&mut`, with no lock between its reading and its writing half and no wake-up
/// passed from one copy to another.
///
/// Each direction reads a chunk, writes all of it (and flushes), then reads the next, so a
/// side that does not take its bytes holds the other back, as a copy loop would.
struct Relay<'a, C, S, F> {
    client: &'a mut C,
    server: &'a mut S,
    filter: F,
    filtered: Filtered,
    /// Client bytes on their way to the server (in `filtered.forward` when the filter
    /// edited them).
    up: Pipe,
    /// The client has ended its stream: what is left upstream is shutting the server's side.
    client_done: bool,
    /// Upstream reads nothing until the reply queue has room.
    waits_for_room: bool,
    /// Server bytes on their way to the client.
    down: Pipe,
    /// The server has ended its stream: what is left downstream is shutting the client's
    /// side.
    server_done: bool,
    /// The gateway's answers for the client, oldest first; the front one is being written
    /// (`reply_pos` of it so far), always between two writes of server bytes.
    replies: VecDeque<Vec<u8>>,
    reply_pos: usize,
    silence: Option<Silence>,
    client_to_server: u64,
    server_to_client: u64,
}

/// One direction's reused buffer and the chunk in it that is still being written.
struct Pipe {
    buf: Vec<u8>,
    /// Bytes of the current chunk; 0 when there is none.
    len: usize,
    /// Bytes of the current chunk written so far.
    pos: usize,
    /// The last read filled the buffer: it doubles (up to [`BULK_BUFFER`]) before the next.
    grow: bool,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0u8; COPY_BUFFER],
            len: 0,
            pos: 0,
            grow: false,
        }
    }

    /// Reads the next chunk into the buffer; `Ok(0)` at the end of the stream (a TLS peer
    /// that closes without close_notify included: for a database session that is how many
    /// clients end, not an attack on the data already relayed).
    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        from: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if self.grow {
            self.buf.resize((self.buf.len() * 2).min(BULK_BUFFER), 0);
            self.grow = false;
        }
        let mut read = ReadBuf::new(&mut self.buf);
        match ready!(Pin::new(from).poll_read(cx, &mut read)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(err) => return Poll::Ready(Err(err)),
        }
        let n = read.filled().len();
        self.grow = n == self.buf.len() && self.buf.len() < BULK_BUFFER;
        Poll::Ready(Ok(n))
    }
}

impl<C, S, F> Relay<'_, C, S, F>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&[u8], &mut Filtered) -> Result<(), ProxyError>,
{
    /// Relays both ways. `None` once the client has closed and the server's side is shut
    /// down (the server may still be finishing: [`Relay::poll_drain`]); otherwise how the
    /// relay ended.
    fn poll_both(&mut self, cx: &mut Context<'_>) -> Poll<Option<RelayEnd>> {
        loop {
            match self.poll_up(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(None),
                Poll::Ready(Err(end)) => return Poll::Ready(Some(end)),
                Poll::Pending => {}
            }
            match self.poll_down(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Some(RelayEnd::Closed(Side::Server))),
                Poll::Ready(Err(end)) => return Poll::Ready(Some(end)),
                Poll::Pending => {}
            }
            // Upstream waited for room in the reply queue, which downstream has just made.
            if !(self.waits_for_room && self.replies.len() < QUEUED_REPLIES) {
                break;
            }
        }
        // Checked once both directions wait: a server chunk still unwritten here is one the
        // client does not take, so the goodbye never lands inside one it is reading.
        if let Some(silence) = &mut self.silence {
            if let Poll::Ready(after) = silence.poll(cx) {
                return Poll::Ready(Some(RelayEnd::Idle(after)));
            }
        }
        Poll::Pending
    }

    /// After the client has gone: relays the server's last bytes (and queued replies) until
    /// it closes, fails, or the client's idle limit ends the wait.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.poll_down(cx).is_ready() {
            return Poll::Ready(());
        }
        match &mut self.silence {
            Some(silence) => silence.poll(cx).map(|_| ()),
            None => Poll::Pending,
        }
    }

    /// Copies the client to the server until the client ends, then shuts the server's side
    /// down. The filter sees each chunk before anything of it is forwarded; what it answers
    /// itself is queued for downstream.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayEnd>> {
        let failed_to = |err: std::io::Error| RelayEnd::Failed(Side::Server, ProxyError::Io(err));
        loop {
            if self.up.len > 0 {
                let chunk = if self.filtered.edited {
                    &self.filtered.forward[..]
                } else {
                    &self.up.buf[..self.up.len]
                };
                ready!(poll_write_all(self.server, cx, chunk, &mut self.up.pos))
                    .map_err(failed_to)?;
                self.client_to_server += self.up.len as u64;
                self.up.len = 0;
                self.up.pos = 0;
            }
            // The gateway's answers follow what the client sent before the refused command.
            if !self.filtered.reply.is_empty() {
                self.replies
                    .push_back(std::mem::take(&mut self.filtered.reply));
            }
            self.filtered.edited = false;
            self.filtered.forward.clear();
            if self.client_done {
                ready!(Pin::new(&mut *self.server).poll_shutdown(cx)).map_err(failed_to)?;
                return Poll::Ready(Ok(()));
            }
            self.waits_for_room = self.replies.len() >= QUEUED_REPLIES;
            if self.waits_for_room {
                return Poll::Pending;
            }
            let n = ready!(self.up.poll_fill(self.client, cx))
                .map_err(|err| RelayEnd::Failed(Side::Client, ProxyError::Io(err)))?;
            if n == 0 {
                self.client_done = true;
                continue;
            }
            if let Some(silence) = &mut self.silence {
                silence.touch();
            }
            (self.filter)(&self.up.buf[..n], &mut self.filtered)
                .map_err(|err| RelayEnd::Failed(Side::Client, err))?;
            self.up.len = if self.filtered.edited {
                self.filtered.forward.len()
            } else {
                n
            };
        }
    }

    /// Copies the server to the client until the server ends, then shuts the client's side
    /// down, writing the gateway's queued answers between two server chunks.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayEnd>> {
        let failed_to = |err: std::io::Error| RelayEnd::Failed(Side::Client, ProxyError::Io(err));
        loop {
            if self.down.len > 0 {
                let chunk = &self.down.buf[..self.down.len];
                ready!(poll_write_all(self.client, cx, chunk, &mut self.down.pos))
                    .map_err(failed_to)?;
                self.server_to_client += self.down.len as u64;
                self.down.len = 0;
                self.down.pos = 0;
            }
            if self.server_done {
                ready!(Pin::new(&mut *self.client).poll_shutdown(cx)).map_err(failed_to)?;
                return Poll::Ready(Ok(()));
            }
            if let Some(reply) = self.replies.front() {
                ready!(poll_write_all(self.client, cx, reply, &mut self.reply_pos))
                    .map_err(failed_to)?;
                self.replies.pop_front();
                self.reply_pos = 0;
                continue;
            }
            let n = ready!(self.down.poll_fill(self.server, cx))
                .map_err(|err| RelayEnd::Failed(Side::Server, ProxyError::Io(err)))?;
            self.down.len = n;
            self.server_done = n == 0;
        }
    }
}

/// Writes `bytes[*pos..]` to `to`, then flushes it; `*pos` follows what was taken.
fn poll_write_all<W: AsyncWrite + Unpin>(
    to: &mut W,
    cx: &mut Context<'_>,
    bytes: &[u8],
    pos: &mut usize,
) -> Poll<std::io::Result<()>> {
    while *pos < bytes.len() {
        let n = ready!(Pin::new(&mut *to).poll_write(cx, &bytes[*pos..]))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        *pos += n;
    }
    Pin::new(to).poll_flush(cx)
}

/// When the client last sent something, and the timer that ends an idle session.
struct Silence {
    limit: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Silence {
    fn new(limit: Duration) -> Silence {
        Silence {
            limit,
            last: Instant::now(),
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Ready with the limit once the client has been silent that long. The timer is moved
    /// on only when it fires, not at every read.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last + self.limit;
            if Instant::now() >= deadline {
                return Poll::Ready(self.limit);
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    #[tokio::test]
    async fn a_copy_buffer_doubles_while_reads_fill_it_and_stays_small_otherwise() {
        let mut pipe = Pipe::new();
        let sizes = |pipe: &mut Pipe, from: &mut &[u8]| {
            let mut seen = Vec::new();
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            while let Poll::Ready(Ok(n)) = pipe.poll_fill(from, &mut cx) {
                if n == 0 {
                    break;
                }
                seen.push((n, pipe.buf.len()));
            }
            seen
        };
        // Small statements: the buffer keeps its size.
        let small = [1u8; 100];
        for _ in 0..3 {
            assert_eq!(sizes(&mut pipe, &mut &small[..]), [(100, COPY_BUFFER)]);
        }
        // Bulk: each full read doubles it, up to the largest size.
        let bulk = vec![2u8; 1 << 20];
        let seen = sizes(&mut pipe, &mut &bulk[..]);
        let buffers: Vec<usize> = seen.iter().map(|&(_, len)| len).take(6).collect();
        assert_eq!(buffers, [4096, 8192, 16384, 32768, 65536, 65536]);
        assert_eq!(seen.iter().map(|&(n, _)| n).sum::<usize>(), bulk.len());
    }

    #[tokio::test]
    async fn relay_ends_and_closes_the_client_when_the_server_goes() {
        let (mut app, mut client) = duplex(1024);
        let (mut server, mut db) = duplex(1024);
        let relay_task =
            tokio::spawn(
                async move { relay_inspecting(&mut client, &mut server, |_| Ok(())).await },
            );
        app.write_all(b"a long query").await.unwrap();
        let mut query = [0u8; 12];
        db.read_exact(&mut query).await.unwrap();
        db.write_all(b"the server shuts down").await.unwrap();
        drop(db);
        // The client never closes by itself; the relay must still end and close it.
        let stats = tokio::time::timeout(Duration::from_secs(5), relay_task)
            .await
            .expect("relay ended")
            .unwrap();
        assert!(matches!(stats.end, RelayEnd::Closed(Side::Server)));
        let mut rest = Vec::new();
        app.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"the server shuts down");
        assert_eq!(stats.server_to_client, rest.len() as u64);
    }

    #[tokio::test]
    async fn a_silent_client_is_told_and_closed_and_an_active_one_is_not() {
        let (mut app, mut client) = duplex(1024);
        let (mut server, mut db) = duplex(1024);
        let idle = IdleLimit {
            after: Duration::from_millis(300),
            goodbye: b"bye".to_vec(),
        };
        let relay_task = tokio::spawn(async move {
            relay_filtering(&mut client, &mut server, Some(&idle), |_, _| Ok(())).await
        });
        // Active for three times the limit: one byte every 100 ms.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(900) {
            app.write_all(b"x").await.unwrap();
            let mut got = [0u8; 1];
            db.read_exact(&mut got).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!relay_task.is_finished(), "an active client was cut off");
        // Silent: told and closed within a bound.
        let stats = tokio::time::timeout(Duration::from_secs(3), relay_task)
            .await
            .expect("relay ended")
            .unwrap();
        assert!(matches!(stats.end, RelayEnd::Idle(d) if d == Duration::from_millis(300)));
        let mut rest = Vec::new();
        app.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        let mut server_rest = Vec::new();
        db.read_to_end(&mut server_rest).await.unwrap();
        assert!(server_rest.is_empty());
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_and_sending_is_closed_when_idle() {
        let (app, mut client) = duplex(1024);
        let (mut server, mut db) = duplex(1024);
        let idle = IdleLimit {
            after: Duration::from_millis(300),
            goodbye: b"bye".to_vec(),
        };
        let relay_task = tokio::spawn(async move {
            relay_filtering(&mut client, &mut server, Some(&idle), |_, _| Ok(())).await
        });
        // A result far larger than what the client's side buffers, which it never reads.
        let result = vec![b'r'; 256 * 1024];
        let writer = tokio::spawn(async move {
            let _ = db.write_all(&result).await;
            db
        });
        let stats = tokio::time::timeout(Duration::from_secs(20), relay_task)
            .await
            .expect("the relay ended although the client read nothing")
            .unwrap();
        assert!(matches!(stats.end, RelayEnd::Idle(d) if d == Duration::from_millis(300)));
        assert!(stats.server_to_client < 256 * 1024);
        drop(app);
        let _ = writer.await;
    }

    #[tokio::test]
    async fn relay_forwards_both_ways_and_ends_when_the_client_closes() {
        crate::testing::relay_round_trip(
            b"any bytes at all",
            5,
            |mut client, mut server| async move {
                let stats = relay_inspecting(&mut client, &mut server, |_| Ok(())).await;
                (stats, ())
            },
        )
        .await;
    }
}
