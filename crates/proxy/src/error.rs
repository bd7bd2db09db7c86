//! Errors of the wire-protocol layer.
//!
//! `ProxyError` covers a client connection (handshake, framing, TLS); `UpstreamError` covers
//! the gateway's own connection to a database server. Neither carries policy: the session
//! pipeline decides what a client is told.

/// A failure on a client connection. It ends that connection only.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection in the middle of a packet.
    #[error("connection closed in the middle of a packet")]
    Truncated,
    /// The peer closed the connection before sending anything (health checks, port scans).
    #[error("connection closed before the startup packet")]
    ClosedBeforeStartup,
    /// The handshake took longer than allowed.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// A packet that does not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A startup packet longer than PostgreSQL itself accepts.
    #[error("startup packet of {0} bytes is too large")]
    StartupTooLarge(usize),
    /// A protocol version other than 3.x.
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol {
        /// Requested major version.
        major: i32,
        /// Requested minor version.
        minor: i32,
    },
    /// The client tried to start a session without TLS; it has been told so.
    #[error("client sent a plaintext startup message; TLS is required")]
    TlsRequired,
    /// The TLS handshake failed (including a rejected client certificate).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    /// The client asked for a startup parameter that would change the session's identity;
    /// it has been told so.
    #[error("startup parameter refused: {0}")]
    RefusedStartupParameter(String),
    /// A direct-TLS client did not negotiate the `postgresql` ALPN protocol.
    #[error("direct TLS connection without ALPN protocol \"postgresql\"")]
    DirectTlsWithoutAlpn,
}

/// Which authentication the database server asked for instead of accepting the gateway's
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthenticationKind {
    /// Cleartext password (code 3).
    CleartextPassword,
    /// MD5 password (code 5).
    Md5Password,
    /// SASL with the listed mechanisms (code 10), e.g. SCRAM-SHA-256.
    Sasl(Vec<String>),
    /// GSSAPI or SSPI (codes 7 and 9).
    Gss,
    /// Any other code.
    Other(i32),
}

impl std::fmt::Display for AuthenticationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthenticationKind::CleartextPassword => f.write_str("cleartext password"),
            AuthenticationKind::Md5Password => f.write_str("MD5 password"),
            AuthenticationKind::Sasl(mechanisms) => write!(f, "SASL ({})", mechanisms.join(", ")),
            AuthenticationKind::Gss => f.write_str("GSSAPI"),
            AuthenticationKind::Other(code) => write!(f, "authentication code {code}"),
        }
    }
}

/// A failure connecting to a database server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The socket failed.
    #[error("i/o error talking to the database server: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered the SSLRequest with something other than `S`.
    #[error("server does not support TLS")]
    TlsNotSupported,
    /// The TLS handshake with the server failed.
    #[error("TLS handshake with the database server failed: {0}")]
    TlsHandshake(std::io::Error),
    /// The server wants a password or another method instead of certificate auth.
    #[error("database asked for a password ({0}); dbward authenticates with client certificates")]
    AuthenticationRequired(AuthenticationKind),
    /// A PostgreSQL server refused the session with an ErrorResponse.
    #[error("database server error {severity} {sqlstate}: {message}")]
    Server {
        /// SQLSTATE code.
        sqlstate: String,
        /// Non-localized severity.
        severity: String,
        /// Primary message.
        message: String,
        /// Detail (`DETAIL:` in psql), when the server sent one.
        detail: Option<String>,
    },
    /// The server sent something that does not follow the protocol.
    #[error("protocol violation from the database server: {0}")]
    Protocol(String),
    /// A MySQL or MariaDB server refused the session with an ERR packet.
    #[error("database server error {code} ({sqlstate}): {message}")]
    MysqlServer {
        /// Error number (`1045`, `1040`, ...).
        code: u16,
        /// SQLSTATE (`HY000` when the server sent none).
        sqlstate: String,
        /// Message text.
        message: String,
    },
}

impl From<ProxyError> for UpstreamError {
    /// Errors of the message readers and decoders, which serve both directions, seen from
    /// the upstream side.
    fn from(err: ProxyError) -> Self {
        match err {
            ProxyError::Io(io) => UpstreamError::Io(io),
            ProxyError::Protocol(violation) => UpstreamError::Protocol(violation),
            other => UpstreamError::Protocol(other.to_string()),
        }
    }
}

/// A failed read: the peer closing in the middle of a packet is [`ProxyError::Truncated`],
/// anything else an I/O error.
pub(crate) fn eof_as_truncated(err: std::io::Error) -> ProxyError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        ProxyError::Truncated
    } else {
        ProxyError::Io(err)
    }
}
