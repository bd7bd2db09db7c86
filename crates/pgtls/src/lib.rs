//! TLS for tokio-postgres with rustls (the ring provider of the workspace): used by the
//! provisioner's admin connections and by the PostgreSQL store backend, so there is one
//! adapter. The caller's `ClientConfig` decides what is verified and which client
//! certificate is shown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

/// Makes a [`RustlsConnect`] for every connection tokio-postgres opens.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl MakeRustlsConnect {
    /// Connects with `config`, verifying the server certificate against `server_name`
    /// whatever address is dialled (databases are often reached by IP address while their
    /// certificate names a host).
    pub fn new(config: Arc<ClientConfig>, server_name: impl Into<String>) -> Self {
        MakeRustlsConnect {
            config,
            server_name: Some(server_name.into()),
        }
    }

    /// Connects with `config`, verifying the server certificate against the host that
    /// tokio-postgres dials (libpq's behaviour).
    pub fn for_dialled_host(config: Arc<ClientConfig>) -> Self {
        MakeRustlsConnect {
            config,
            server_name: None,
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, dialled_host: &str) -> io::Result<RustlsConnect> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| dialled_host.to_string());
        // A Unix socket path is no server name; its server declines TLS before one is
        // needed, and a handshake without a name fails in `connect`.
        let server_name = ServerName::try_from(name).ok();
        if server_name.is_none() && self.server_name.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid TLS server name {:?}", self.server_name),
            ));
        }
        Ok(RustlsConnect {
            connector: TlsConnector::from(self.config.clone()),
            server_name,
        })
    }
}

/// Performs the TLS handshake of one connection.
pub struct RustlsConnect {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let server_name = self.server_name.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no valid TLS server name")
            })?;
            let tls = self.connector.connect(server_name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream to the database.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        // No channel binding: dbward authenticates by client certificate, and with SCRAM (a
        // store DSN with a password) the verified certificate chain already pins the server.
        ChannelBinding::none()
    }
}

impl<S> AsyncRead for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
