//! MySQL client/server protocol packets: framing (3-byte length, sequence id) and the few
//! messages the handshake needs, each with one encode or decode function.
//!
//! Only the connection phase is modelled here; commands pass through the relay as bytes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{eof_as_truncated, ProxyError};

/// Largest payload of one packet; a payload of exactly this length continues in the next.
pub const MAX_PAYLOAD: usize = 0xff_ffff;

/// Largest connection-phase packet read from a database server (or, by the local bridge,
/// from either side). Handshake packets are small; this only keeps a misbehaving peer from
/// making the reader allocate much.
pub const MAX_HANDSHAKE_PACKET: usize = 64 * 1024;

/// Capability flags (`CLIENT_*`) the gateway knows about.
pub mod capability {
    /// New, more secure passwords; MariaDB reads bit 0 as `CLIENT_MYSQL`.
    pub const LONG_PASSWORD: u32 = 1;
    /// Found instead of affected rows.
    pub const FOUND_ROWS: u32 = 1 << 1;
    /// All column flags.
    pub const LONG_FLAG: u32 = 1 << 2;
    /// A database name may follow in the handshake response.
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    /// `db.table.column` is not allowed.
    pub const NO_SCHEMA: u32 = 1 << 4;
    /// Compression protocol.
    pub const COMPRESS: u32 = 1 << 5;
    /// ODBC client.
    pub const ODBC: u32 = 1 << 6;
    /// `LOAD DATA LOCAL`.
    pub const LOCAL_FILES: u32 = 1 << 7;
    /// Ignore spaces before `(`.
    pub const IGNORE_SPACE: u32 = 1 << 8;
    /// The 4.1 protocol.
    pub const PROTOCOL_41: u32 = 1 << 9;
    /// Interactive client (interactive_timeout).
    pub const INTERACTIVE: u32 = 1 << 10;
    /// Switch to TLS after the SSLRequest.
    pub const SSL: u32 = 1 << 11;
    /// Transaction status in OK packets.
    pub const TRANSACTIONS: u32 = 1 << 13;
    /// 4.1 authentication (length-prefixed auth response).
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    /// Several statements per COM_QUERY.
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    /// Several result sets per command.
    pub const MULTI_RESULTS: u32 = 1 << 17;
    /// Several result sets from prepared statements.
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    /// Authentication plugins.
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    /// Connection attributes in the handshake response.
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    /// Length-encoded auth response.
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    /// Expired passwords may log in to change them.
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    /// Session state changes in OK packets.
    pub const SESSION_TRACK: u32 = 1 << 23;
    /// OK packets instead of EOF packets.
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    /// Optional result set metadata (MySQL 8).
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    /// Query attributes in COM_QUERY (MySQL 8.0.23).
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
}

/// Status flag: autocommit is on.
pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;

/// First payload byte of an OK packet.
pub const OK_HEADER: u8 = 0x00;
/// First payload byte of an ERR packet.
pub const ERR_HEADER: u8 = 0xff;
/// First payload byte of an AuthSwitchRequest (and of an EOF packet).
pub const AUTH_SWITCH_HEADER: u8 = 0xfe;
/// First payload byte of AuthMoreData.
pub const AUTH_MORE_DATA_HEADER: u8 = 0x01;

/// Command bytes the relay taps.
pub mod command {
    /// `COM_QUIT`.
    pub const QUIT: u8 = 0x01;
    /// `COM_QUERY`: SQL text follows.
    pub const QUERY: u8 = 0x03;
    /// `COM_STMT_PREPARE`: SQL text follows.
    pub const STMT_PREPARE: u8 = 0x16;
}

/// The authentication plugin the gateway offers clients: every stock client has it, and an
/// empty password gives an empty response.
pub const NATIVE_PASSWORD_PLUGIN: &str = "mysql_native_password";

/// One packet's payload and sequence id. Payloads split at [`MAX_PAYLOAD`] are joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the last physical packet.
    pub seq: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Reads one logical packet of at most `max_len` bytes.
pub async fn read_packet<S>(stream: &mut S, max_len: usize) -> Result<Packet, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 4];
        stream
            .read_exact(&mut header)
            .await
            .map_err(eof_as_truncated)?;
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        if payload.len() + len > max_len {
            return Err(ProxyError::Protocol(format!(
                "packet of more than {max_len} bytes during the handshake"
            )));
        }
        let start = payload.len();
        payload.resize(start + len, 0);
        stream
            .read_exact(&mut payload[start..])
            .await
            .map_err(eof_as_truncated)?;
        if len < MAX_PAYLOAD {
            return Ok(Packet {
                seq: header[3],
                payload,
            });
        }
    }
}

/// Frames `payload` (shorter than [`MAX_PAYLOAD`]; handshake packets always are) with `seq`.
pub fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() < MAX_PAYLOAD);
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

/// Writes one framed packet and flushes it.
pub async fn write_packet<S>(stream: &mut S, seq: u8, payload: &[u8]) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(&frame(seq, payload)).await?;
    stream.flush().await
}

/// The server's first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeV10 {
    /// Server version string as sent (`5.5.5-10.11.6-MariaDB-…`, `8.0.36`).
    pub server_version: String,
    /// Connection (thread) id.
    pub connection_id: u32,
    /// The scramble (auth plugin data), without its trailing NUL.
    pub scramble: Vec<u8>,
    /// Server capabilities (lower and upper 16 bits).
    pub capabilities: u32,
    /// Default collation id.
    pub charset: u8,
    /// Status flags.
    pub status: u16,
    /// Authentication plugin the server proposes.
    pub auth_plugin: String,
}

impl HandshakeV10 {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(10);
        out.extend_from_slice(self.server_version.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        let (part1, part2) = self.scramble.split_at(self.scramble.len().min(8));
        out.extend_from_slice(part1);
        out.resize(out.len() + 8 - part1.len(), 0);
        out.push(0);
        out.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        out.push((self.scramble.len() + 1) as u8);
        out.extend_from_slice(&[0; 10]);
        // Part 2 is at least 13 bytes including its NUL.
        out.extend_from_slice(part2);
        out.resize(out.len() + 13usize.saturating_sub(part2.len()), 0);
        out.extend_from_slice(self.auth_plugin.as_bytes());
        out.push(0);
        out
    }

    /// Decodes the payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ProxyError> {
        let mut r = Reader::new(payload);
        let protocol = r.u8()?;
        if protocol != 10 {
            return Err(ProxyError::Protocol(format!(
                "unsupported handshake protocol version {protocol}"
            )));
        }
        let server_version = r.cstr_lossy()?;
        let connection_id = r.u32()?;
        let mut scramble = r.take(8)?.to_vec();
        r.u8()?;
        let mut capabilities = u32::from(r.u16()?);
        let (mut charset, mut status, mut auth_data_len) = (0, 0, 0usize);
        if !r.is_empty() {
            charset = r.u8()?;
            status = r.u16()?;
            capabilities |= u32::from(r.u16()?) << 16;
            auth_data_len = usize::from(r.u8()?);
            r.take(10)?;
        }
        let mut auth_plugin = String::new();
        if capabilities & capability::SECURE_CONNECTION != 0 {
            let len = auth_data_len.saturating_sub(8).max(13);
            let part2 = r.take(len.min(r.remaining()))?;
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            scramble.extend_from_slice(part2);
        }
        if capabilities & capability::PLUGIN_AUTH != 0 && !r.is_empty() {
            auth_plugin = r.cstr_or_rest_lossy();
        }
        Ok(HandshakeV10 {
            server_version,
            connection_id,
            scramble,
            capabilities,
            charset,
            status,
            auth_plugin,
        })
    }
}

/// The fixed 32-byte head of a HandshakeResponse41, which is all an SSLRequest is.
pub fn ssl_request(capabilities: u32, charset: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&(capabilities | capability::SSL).to_le_bytes());
    out.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    out.push(charset);
    out.extend_from_slice(&[0; 23]);
    out
}

/// A client's HandshakeResponse41.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// Client capabilities.
    pub capabilities: u32,
    /// Collation id the client wants.
    pub charset: u8,
    /// User name.
    pub user: String,
    /// Authentication response (scrambled password), as sent.
    pub auth_response: Vec<u8>,
    /// Initial database, when `CLIENT_CONNECT_WITH_DB` was set and one was named.
    pub database: Option<String>,
    /// Authentication plugin the response was computed with.
    pub auth_plugin: Option<String>,
    /// Connection attributes (`_client_name`, `program_name`, …) in the order sent.
    pub attrs: Vec<(String, String)>,
}

/// Length of an SSLRequest, the short form of a handshake response.
pub const SSL_REQUEST_LEN: usize = 32;

impl HandshakeResponse {
    /// Capabilities of a response or SSLRequest, when it is long enough to carry them.
    pub fn peek_capabilities(payload: &[u8]) -> Option<u32> {
        let bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes))
    }

    /// Encodes the payload; `CONNECT_WITH_DB`, `PLUGIN_AUTH` and `CONNECT_ATTRS` are set
    /// from the fields.
    pub fn encode(&self) -> Vec<u8> {
        let capabilities = self.encode_capabilities();
        let mut out = ssl_request(capabilities, self.charset);
        out[..4].copy_from_slice(&capabilities.to_le_bytes());
        out.extend_from_slice(self.user.as_bytes());
        out.push(0);
        let auth = &self.auth_response[..self.auth_response.len().min(255)];
        out.push(auth.len() as u8);
        out.extend_from_slice(auth);
        if let Some(database) = &self.database {
            out.extend_from_slice(database.as_bytes());
            out.push(0);
        }
        if let Some(plugin) = &self.auth_plugin {
            out.extend_from_slice(plugin.as_bytes());
            out.push(0);
        }
        if !self.attrs.is_empty() {
            let mut attrs = Vec::new();
            for (key, value) in &self.attrs {
                put_lenenc_bytes(&mut attrs, key.as_bytes());
                put_lenenc_bytes(&mut attrs, value.as_bytes());
            }
            put_lenenc_int(&mut out, attrs.len() as u64);
            out.extend_from_slice(&attrs);
        }
        out
    }

    /// The capabilities [`Self::encode`] sends: the given ones, with the flags that describe
    /// the response's own layout set from its fields.
    pub fn encode_capabilities(&self) -> u32 {
        let mut capabilities = self.capabilities
            & !(capability::CONNECT_WITH_DB
                | capability::PLUGIN_AUTH
                | capability::CONNECT_ATTRS
                | capability::PLUGIN_AUTH_LENENC_CLIENT_DATA)
            | capability::PROTOCOL_41
            | capability::SECURE_CONNECTION;
        if self.database.is_some() {
            capabilities |= capability::CONNECT_WITH_DB;
        }
        if self.auth_plugin.is_some() {
            capabilities |= capability::PLUGIN_AUTH;
        }
        if !self.attrs.is_empty() {
            capabilities |= capability::CONNECT_ATTRS;
        }
        capabilities
    }

    /// Decodes the payload. Fields the client's capabilities leave out stay empty.
    pub fn decode(payload: &[u8]) -> Result<Self, ProxyError> {
        let mut r = Reader::new(payload);
        let capabilities = r.u32()?;
        if capabilities & capability::PROTOCOL_41 == 0 {
            return Err(ProxyError::Protocol(
                "client does not speak the 4.1 protocol".into(),
            ));
        }
        r.u32()?;
        let charset = r.u8()?;
        r.take(23)?;
        let user = r.cstr_lossy()?;
        let auth_response = if capabilities & capability::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            let len = r.lenenc_int()?;
            r.take(usize::try_from(len).map_err(|_| short())?)?.to_vec()
        } else if capabilities & capability::SECURE_CONNECTION != 0 {
            let len = r.u8()?;
            r.take(usize::from(len))?.to_vec()
        } else {
            r.cstr()?.to_vec()
        };
        let mut database = None;
        if capabilities & capability::CONNECT_WITH_DB != 0 && !r.is_empty() {
            let name = r.cstr_or_rest_lossy();
            if !name.is_empty() {
                database = Some(name);
            }
        }
        let mut auth_plugin = None;
        if capabilities & capability::PLUGIN_AUTH != 0 && !r.is_empty() {
            auth_plugin = Some(r.cstr_or_rest_lossy());
        }
        let mut attrs = Vec::new();
        if capabilities & capability::CONNECT_ATTRS != 0 && !r.is_empty() {
            let len = usize::try_from(r.lenenc_int()?).map_err(|_| short())?;
            let mut a = Reader::new(r.take(len)?);
            while !a.is_empty() {
                let key = a.lenenc_str()?;
                let value = a.lenenc_str()?;
                attrs.push((key, value));
            }
        }
        Ok(HandshakeResponse {
            capabilities,
            charset,
            user,
            auth_response,
            database,
            auth_plugin,
            attrs,
        })
    }
}

/// An ERR packet's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    /// Error number (`1045`, `3159`, …).
    pub code: u16,
    /// SQLSTATE; `HY000` when the packet carried none.
    pub sqlstate: String,
    /// Message text.
    pub message: String,
}

impl ErrPacket {
    /// Encodes the payload in the 4.1 form (with SQLSTATE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(ERR_HEADER);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.push(b'#');
        let mut state = [b'H', b'Y', b'0', b'0', b'0'];
        for (slot, byte) in state.iter_mut().zip(self.sqlstate.bytes()) {
            *slot = byte;
        }
        out.extend_from_slice(&state);
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    /// Decodes a payload starting with `0xff`.
    pub fn decode(payload: &[u8]) -> Result<Self, ProxyError> {
        let mut r = Reader::new(payload);
        if r.u8()? != ERR_HEADER {
            return Err(ProxyError::Protocol("not an ERR packet".into()));
        }
        let code = r.u16()?;
        let mut sqlstate = "HY000".to_string();
        if r.rest().first() == Some(&b'#') {
            r.u8()?;
            sqlstate = String::from_utf8_lossy(r.take(5)?).into_owned();
        }
        let message = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(ErrPacket {
            code,
            sqlstate,
            message,
        })
    }
}

/// An OK packet with no rows and no info, in the form `capabilities` expects.
pub fn ok_packet(capabilities: u32, status: u16) -> Vec<u8> {
    let mut out = vec![OK_HEADER, 0, 0];
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    if capabilities & capability::SESSION_TRACK != 0 {
        // Empty info string, no session state change.
        out.push(0);
    }
    out
}

/// Reads an OK packet's status flags (after affected rows and last insert id).
pub fn ok_status(payload: &[u8]) -> Result<u16, ProxyError> {
    let mut r = Reader::new(payload);
    r.u8()?;
    r.lenenc_int()?;
    r.lenenc_int()?;
    r.u16()
}

/// An AuthSwitchRequest's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitch {
    /// Plugin to switch to.
    pub plugin: String,
    /// Its data (normally a fresh scramble).
    pub data: Vec<u8>,
}

impl AuthSwitch {
    /// Decodes a payload starting with `0xfe`.
    pub fn decode(payload: &[u8]) -> Result<Self, ProxyError> {
        let mut r = Reader::new(payload);
        r.u8()?;
        let plugin = r.cstr_or_rest_lossy();
        Ok(AuthSwitch {
            plugin,
            data: r.rest().to_vec(),
        })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![AUTH_SWITCH_HEADER];
        out.extend_from_slice(self.plugin.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.data);
        out
    }
}

fn put_lenenc_int(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=250 => out.push(value as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(value as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(value as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

fn put_lenenc_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_lenenc_int(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn short() -> ProxyError {
    ProxyError::Protocol("packet too short".into())
}

/// A cursor over a payload whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProxyError> {
        if n > self.bytes.len() {
            return Err(short());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ProxyError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ProxyError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ProxyError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn lenenc_int(&mut self) -> Result<u64, ProxyError> {
        let first = self.u8()?;
        let width = match first {
            0xfc => 2,
            0xfd => 3,
            0xfe => 8,
            0xfb | 0xff => {
                return Err(ProxyError::Protocol(format!(
                    "invalid length-encoded integer {first:#04x}"
                )))
            }
            small => return Ok(u64::from(small)),
        };
        let mut value = [0u8; 8];
        value[..width].copy_from_slice(self.take(width)?);
        Ok(u64::from_le_bytes(value))
    }

    fn lenenc_str(&mut self) -> Result<String, ProxyError> {
        let len = usize::try_from(self.lenenc_int()?).map_err(|_| short())?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn cstr(&mut self) -> Result<&'a [u8], ProxyError> {
        let nul = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| ProxyError::Protocol("string without terminating NUL".into()))?;
        let s = &self.bytes[..nul];
        self.bytes = &self.bytes[nul + 1..];
        Ok(s)
    }

    fn cstr_lossy(&mut self) -> Result<String, ProxyError> {
        Ok(String::from_utf8_lossy(self.cstr()?).into_owned())
    }

    /// A NUL-terminated string, or the rest of the payload when the NUL is missing (some
    /// clients and servers leave off the last one).
    fn cstr_or_rest_lossy(&mut self) -> String {
        match self.cstr() {
            Ok(s) => String::from_utf8_lossy(s).into_owned(),
            Err(_) => {
                let s = String::from_utf8_lossy(self.bytes).into_owned();
                self.bytes = &[];
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_v10_round_trips() {
        let greeting = HandshakeV10 {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 42,
            scramble: (1..=20).collect(),
            capabilities: capability::PROTOCOL_41
                | capability::SSL
                | capability::SECURE_CONNECTION
                | capability::PLUGIN_AUTH
                | capability::DEPRECATE_EOF,
            charset: 45,
            status: SERVER_STATUS_AUTOCOMMIT,
            auth_plugin: NATIVE_PASSWORD_PLUGIN.into(),
        };
        assert_eq!(HandshakeV10::decode(&greeting.encode()).unwrap(), greeting);
    }

    #[test]
    fn handshake_response_round_trips_with_attrs_and_database() {
        let response = HandshakeResponse {
            capabilities: capability::PROTOCOL_41 | capability::SECURE_CONNECTION,
            charset: 33,
            user: "o'brien ü".into(),
            auth_response: vec![1, 2, 3],
            database: Some("app".into()),
            auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
            attrs: vec![("_client_name".into(), "libmariadb".into())],
        };
        let decoded = HandshakeResponse::decode(&response.encode()).unwrap();
        assert_eq!(decoded.user, response.user);
        assert_eq!(decoded.auth_response, response.auth_response);
        assert_eq!(decoded.database, response.database);
        assert_eq!(decoded.auth_plugin, response.auth_plugin);
        assert_eq!(decoded.attrs, response.attrs);
        assert_ne!(decoded.capabilities & capability::CONNECT_ATTRS, 0);
    }

    #[test]
    fn truncated_handshake_response_is_a_protocol_error() {
        let response = HandshakeResponse {
            capabilities: capability::PROTOCOL_41 | capability::SECURE_CONNECTION,
            user: "alice".into(),
            auth_response: vec![9; 20],
            ..Default::default()
        }
        .encode();
        for cut in [3, 10, 33, 40] {
            assert!(
                HandshakeResponse::decode(&response[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn err_packet_round_trips_and_defaults_sqlstate() {
        let err = ErrPacket {
            code: 3159,
            sqlstate: "HY000".into(),
            message: "no".into(),
        };
        assert_eq!(ErrPacket::decode(&err.encode()).unwrap(), err);
        let old_style = [0xff, 0x10, 0x04, b'T', b'o', b'o'];
        let decoded = ErrPacket::decode(&old_style).unwrap();
        assert_eq!((decoded.code, decoded.sqlstate.as_str()), (1040, "HY000"));
        assert_eq!(decoded.message, "Too");
    }

    #[tokio::test]
    async fn packets_longer_than_one_frame_are_joined() {
        let payload = vec![7u8; MAX_PAYLOAD + 3];
        let mut wire = Vec::new();
        wire.extend_from_slice(&[0xff, 0xff, 0xff, 0]);
        wire.extend_from_slice(&payload[..MAX_PAYLOAD]);
        wire.extend_from_slice(&[3, 0, 0, 1]);
        wire.extend_from_slice(&payload[MAX_PAYLOAD..]);
        let packet = read_packet(&mut &wire[..], usize::MAX).await.unwrap();
        assert_eq!((packet.seq, packet.payload.len()), (1, payload.len()));
        assert!(matches!(
            read_packet(&mut &wire[..], 100).await,
            Err(ProxyError::Protocol(_))
        ));
    }
}
