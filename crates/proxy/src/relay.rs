//! The engine-independent relay: copies an established session's bytes both ways, unchanged,
//! through one reused buffer per direction, letting the engine's tap inspect what the client
//! sends, and says how the session ended ([`RelayStats`]).
//!
//! `pg::relay` and `mysql::relay` put their protocol's framing tap on top; MySQL's tap is
//! also a filter that keeps a few commands from the server and answers them itself. Nothing
//! here knows a protocol's framing.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Size each direction's copy buffer starts at: half a TLS record. Idle sessions hold two of
/// these, so it stays small; a direction whose reads fill it (a bulk transfer) grows it once
/// to [`BULK_BUFFER`], so large results move in fewer, larger reads and writes.
pub(crate) const COPY_BUFFER: usize = 8 * 1024;
/// Size of a copy buffer once its direction carries bulk data.
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
pub(crate) async fn relay_filtering<C, S>(
    client: &mut C,
    server: &mut S,
    idle: Option<&IdleLimit>,
    filter: impl FnMut(&[u8], &mut Filtered) -> Result<(), ProxyError>,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let mut client_to_server = 0u64;
    let mut server_to_client = 0u64;
    let (replies, mut queued) = tokio::sync::mpsc::channel(QUEUED_REPLIES);
    let activity = Activity::new();

    let end = {
        let upstream = copy_filtered(
            &mut client_read,
            &mut server_write,
            &mut client_to_server,
            filter,
            replies,
            &activity,
        );
        // Watched by the copy that writes to the client, so the goodbye never lands inside
        // a server message it was writing.
        let downstream = copy_answering(
            &mut server_read,
            &mut client_write,
            &mut server_to_client,
            &mut queued,
            activity.silence(idle.map(|limit| limit.after)),
        );
        tokio::pin!(upstream, downstream);
        tokio::select! {
            result = &mut upstream => match result {
                Ok(()) => {
                    // The server normally ends the session and closes at once.
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

    if let (RelayEnd::Idle(_), Some(limit)) = (&end, idle) {
        let telling = async {
            client_write.write_all(&limit.goodbye).await?;
            client_write.flush().await
        };
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, telling).await;
    }
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

/// When the client last sent something, shared by the copy that reads it and the watch that
/// ends an idle session.
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends once the client has been silent for `limit`, returning the limit; never without
    /// one.
    async fn silence(&self, limit: Option<Duration>) -> Duration {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
            let deadline = self.start + Duration::from_millis(last) + limit;
            if tokio::time::Instant::now() >= deadline {
                return limit;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Copies the client to the server until the client ends, then shuts the server's side
/// down. `filter` sees each chunk before anything of it is forwarded; what it answers
/// itself goes to `replies`. Every read is noted in `activity`.
async fn copy_filtered<R, W>(
    from: &mut R,
    to: &mut W,
    copied: &mut u64,
    mut filter: impl FnMut(&[u8], &mut Filtered) -> Result<(), ProxyError>,
    replies: tokio::sync::mpsc::Sender<Vec<u8>>,
    activity: &Activity,
) -> Result<(), RelayEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let failed_to = |err: std::io::Error| RelayEnd::Failed(Side::Server, ProxyError::Io(err));
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut filtered = Filtered::default();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // A TLS peer that closes without close_notify: for a database session that is
            // how many clients end, not an attack on the data already relayed.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(RelayEnd::Failed(Side::Client, ProxyError::Io(err))),
        };
        activity.touch();
        let chunk = &buf[..n];
        filter(chunk, &mut filtered).map_err(|err| RelayEnd::Failed(Side::Client, err))?;
        let forward = if filtered.edited {
            &filtered.forward[..]
        } else {
            chunk
        };
        if !forward.is_empty() {
            to.write_all(forward).await.map_err(failed_to)?;
            to.flush().await.map_err(failed_to)?;
            *copied += forward.len() as u64;
        }
        if !filtered.reply.is_empty() {
            // Only fails once the other direction has ended, and then nobody reads it.
            let _ = replies.send(std::mem::take(&mut filtered.reply)).await;
        }
        filtered.edited = false;
        filtered.forward.clear();
        if n == buf.len() && buf.len() < BULK_BUFFER {
            buf.resize(BULK_BUFFER, 0);
        }
    }
    to.shutdown().await.map_err(failed_to)?;
    Ok(())
}

/// Copies the server to the client until the server ends, then shuts the client's side
/// down, writing the gateway's own answers from `replies` between two server reads. Stops
/// with [`RelayEnd::Idle`] when `silence` ends: between two writes, or during one that the
/// client does not take (it reads nothing either).
async fn copy_answering<R, W>(
    from: &mut R,
    to: &mut W,
    copied: &mut u64,
    replies: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
    silence: impl std::future::Future<Output = Duration>,
) -> Result<(), RelayEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let failed_to = |err: std::io::Error| RelayEnd::Failed(Side::Client, ProxyError::Io(err));
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut answering = true;
    tokio::pin!(silence);
    loop {
        let n = tokio::select! {
            after = &mut silence => return Err(RelayEnd::Idle(after)),
            read = from.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(err) => return Err(RelayEnd::Failed(Side::Server, ProxyError::Io(err))),
            },
            reply = replies.recv(), if answering => {
                match reply {
                    Some(reply) => {
                        to.write_all(&reply).await.map_err(failed_to)?;
                        to.flush().await.map_err(failed_to)?;
                    }
                    None => answering = false,
                }
                continue;
            }
        };
        // A client that stops reading as well as sending blocks this write for as long as it
        // likes: the silence is watched here too.
        let writing = async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        };
        tokio::select! {
            after = &mut silence => return Err(RelayEnd::Idle(after)),
            written = writing => written.map_err(failed_to)?,
        }
        *copied += n as u64;
        if n == buf.len() && buf.len() < BULK_BUFFER {
            buf.resize(BULK_BUFFER, 0);
        }
    }
    to.shutdown().await.map_err(failed_to)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

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
