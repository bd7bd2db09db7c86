//! The engine-independent relay: copies an established session's bytes both ways, unchanged,
//! through one reused buffer per direction, letting the engine's tap inspect what the client
//! sends. `pg::relay` and `mysql::relay` add their protocol's framing tap on top.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProxyError;
use crate::pg::{RelayEnd, RelayStats, Side};

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
    inspect: impl FnMut(&[u8]) -> Result<(), ProxyError>,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let mut client_to_server = 0u64;
    let mut server_to_client = 0u64;

    let end = {
        let upstream = copy(
            &mut client_read,
            &mut server_write,
            Side::Client,
            &mut client_to_server,
            inspect,
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
        if n == buf.len() && buf.len() < BULK_BUFFER {
            buf.resize(BULK_BUFFER, 0);
        }
    }
    to.shutdown().await.map_err(failed_to)?;
    Ok(())
}
