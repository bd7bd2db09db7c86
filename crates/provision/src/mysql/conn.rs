//! One admin connection to a MariaDB server: the gateway's own TLS login (certificate, no
//! password) from `dbward-proxy`, then text-protocol queries (`COM_QUERY`).
//!
//! Values never reach SQL as quoted text: callers pass them as hex literals
//! ([`hex_literal`]), which mean the same bytes in every `sql_mode` and character set.

use std::sync::Arc;

use dbward_proxy::mysql::packet::{self, capability, ErrPacket};
use dbward_proxy::mysql::upstream::{self, UpstreamLogin};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Capabilities of the admin session: the 4.1 protocol with EOF packets, one result set per
/// statement.
const ADMIN_CAPABILITIES: u32 = capability::LONG_PASSWORD
    | capability::PROTOCOL_41
    | capability::SECURE_CONNECTION
    | capability::TRANSACTIONS
    | capability::PLUGIN_AUTH;
/// `utf8mb4_general_ci`.
const UTF8MB4: u8 = 45;
/// Largest result packet accepted.
const MAX_PACKET: usize = 16 << 20;

/// Why a statement (or the login) failed on an admin connection to MariaDB/MySQL.
#[derive(Debug)]
pub enum MysqlError {
    /// The server answered with an ERR packet.
    Server(ErrPacket),
    /// The connection failed or the answer did not follow the protocol.
    Connection(String),
}

impl std::error::Error for MysqlError {}

impl std::fmt::Display for MysqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The message is left out: it may be in the server's language and name accounts.
            MysqlError::Server(err) => write!(f, "error {} ({})", err.code, err.sqlstate),
            MysqlError::Connection(text) => f.write_str(text),
        }
    }
}

impl From<std::io::Error> for MysqlError {
    fn from(err: std::io::Error) -> Self {
        MysqlError::Connection(err.to_string())
    }
}

impl From<dbward_proxy::ProxyError> for MysqlError {
    fn from(err: dbward_proxy::ProxyError) -> Self {
        MysqlError::Connection(err.to_string())
    }
}

/// A row of a text result set; `None` is SQL NULL.
pub(crate) type Row = Vec<Option<String>>;

/// An authenticated admin session.
pub(crate) struct AdminConn {
    stream: TlsStream<TcpStream>,
    opened_at: std::time::Instant,
    /// The marker role and the `user_attributes` table were ensured on this connection. A
    /// pooled connection is dropped after any failure, so a fresh one ensures them again.
    pub(crate) setup_done: bool,
    /// While in use: its place among the pool's connections in use.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl crate::pool::PooledConn for AdminConn {
    fn opened_at(&self) -> std::time::Instant {
        self.opened_at
    }

    fn hold_permit(&mut self, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        self.permit = permit;
    }
}

impl AdminConn {
    /// Logs in to `host:port` as `user` into `database` (none: no default schema) with the
    /// certificate in `tls`.
    pub(crate) async fn connect(
        host: &str,
        port: u16,
        tls: Arc<ClientConfig>,
        server_name: &str,
        user: &str,
        database: Option<&str>,
    ) -> Result<AdminConn, MysqlError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| MysqlError::Connection(format!("invalid server name: {e}")))?;
        let login = UpstreamLogin {
            user,
            database,
            client_capabilities: ADMIN_CAPABILITIES,
            charset: UTF8MB4,
        };
        match upstream::connect((host, port), tls, server_name, &login).await {
            Ok(session) => Ok(AdminConn {
                stream: session.stream,
                opened_at: std::time::Instant::now(),
                setup_done: false,
                permit: None,
            }),
            Err(dbward_proxy::UpstreamError::MysqlServer {
                code,
                sqlstate,
                message,
                ..
            }) => Err(MysqlError::Server(ErrPacket {
                code,
                sqlstate,
                message,
            })),
            Err(other) => Err(MysqlError::Connection(other.to_string())),
        }
    }

    /// Runs one statement and returns its rows (none for statements without a result set).
    pub(crate) async fn query(&mut self, sql: &str) -> Result<Vec<Row>, MysqlError> {
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(packet::command::QUERY);
        payload.extend_from_slice(sql.as_bytes());
        if payload.len() >= packet::MAX_PAYLOAD {
            return Err(MysqlError::Connection("statement too long".into()));
        }
        packet::write_packet(&mut self.stream, 0, &payload).await?;

        let first = self.read().await?;
        let columns = match first.first() {
            Some(&packet::OK_HEADER) => return Ok(Vec::new()),
            Some(&packet::ERR_HEADER) => return Err(server_error(&first)),
            _ => lenenc(&mut &first[..])
                .ok_or_else(|| MysqlError::Connection("bad column count".into()))?,
        };
        for _ in 0..columns {
            self.read().await?;
        }
        let eof = self.read().await?;
        if !is_eof(&eof) {
            return Err(MysqlError::Connection("missing EOF after columns".into()));
        }
        let mut rows = Vec::new();
        loop {
            let packet = self.read().await?;
            if is_eof(&packet) {
                return Ok(rows);
            }
            if packet.first() == Some(&packet::ERR_HEADER) {
                return Err(server_error(&packet));
            }
            let mut cursor = &packet[..];
            let mut row = Vec::with_capacity(columns as usize);
            for _ in 0..columns {
                if cursor.first() == Some(&0xfb) {
                    cursor = &cursor[1..];
                    row.push(None);
                    continue;
                }
                let len =
                    lenenc(&mut cursor).ok_or_else(|| MysqlError::Connection("bad row".into()))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= cursor.len())
                    .ok_or_else(|| MysqlError::Connection("bad row".into()))?;
                row.push(Some(String::from_utf8_lossy(&cursor[..len]).into_owned()));
                cursor = &cursor[len..];
            }
            rows.push(row);
        }
    }

    /// Runs one statement and returns the first column of its first row.
    pub(crate) async fn query_value(&mut self, sql: &str) -> Result<Option<String>, MysqlError> {
        Ok(self
            .query(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten()))
    }

    async fn read(&mut self) -> Result<Vec<u8>, MysqlError> {
        Ok(packet::read_packet(&mut self.stream, MAX_PACKET)
            .await?
            .payload)
    }
}

fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

fn server_error(payload: &[u8]) -> MysqlError {
    match ErrPacket::decode(payload) {
        Ok(err) => MysqlError::Server(err),
        Err(err) => MysqlError::Connection(err.to_string()),
    }
}

fn lenenc(cursor: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = cursor.split_first()?;
    let width = match first {
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        0xfb | 0xff => return None,
        small => {
            *cursor = rest;
            return Some(u64::from(small));
        }
    };
    let bytes = rest.get(..width)?;
    let mut value = [0u8; 8];
    value[..width].copy_from_slice(bytes);
    *cursor = &rest[width..];
    Some(u64::from_le_bytes(value))
}

/// A value as a hex literal in the utf8mb4 character set: `_utf8mb4 X'616c696365'`.
pub(crate) fn hex_literal(value: &str) -> String {
    let mut out = String::with_capacity(14 + value.len() * 2);
    out.push_str("_utf8mb4 X'");
    for byte in value.bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_literals_carry_any_text_unchanged() {
        assert_eq!(hex_literal("a'b"), "_utf8mb4 X'612762'");
        assert_eq!(hex_literal(""), "_utf8mb4 X''");
        assert_eq!(hex_literal("ü"), "_utf8mb4 X'c3bc'");
    }

    #[test]
    fn length_encoded_integers_are_read() {
        let mut cursor: &[u8] = &[0xfc, 0x01, 0x02, 9];
        assert_eq!(lenenc(&mut cursor), Some(0x0201));
        assert_eq!(cursor, [9]);
        assert_eq!(lenenc(&mut &[0xfb][..]), None);
        assert_eq!(lenenc(&mut &[0xfd, 1][..]), None);
    }
}
