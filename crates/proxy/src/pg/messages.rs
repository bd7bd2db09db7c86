//! PostgreSQL wire messages: every encoder and decoder of the messages the gateway speaks,
//! one small function each, and the framed readers (startup packets, typed messages).
//!
//! Everything here works on bytes and knows nothing about TLS, sessions or policy. Decoders
//! take input from a peer and therefore never panic: malformed input is a `ProxyError`.
//! The handshake (`startup`, `upstream`, `local`) and the relay's tap read messages only
//! through this module.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::BackendKey;
use crate::error::{eof_as_truncated, AuthenticationKind, ProxyError};

/// Protocol version 3.0, the only one the gateway speaks (`196608`).
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// Request code of an SSLRequest packet.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// Request code of a GSSENCRequest packet.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// Request code of a CancelRequest packet.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// The largest startup packet PostgreSQL itself accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// First byte of a TLS handshake record: a client using PostgreSQL 17 direct TLS sends it
/// where a startup packet would start with its length.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The ALPN protocol name PostgreSQL 17 requires for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";
/// Startup parameters with this prefix are protocol extensions, negotiated rather than
/// passed to the server.
pub const PROTOCOL_EXTENSION_PREFIX: &str = "_pq_.";

/// Message type bytes used by the gateway.
pub mod tag {
    /// Backend: authentication request (`R`).
    pub const AUTHENTICATION: u8 = b'R';
    /// Backend: ParameterStatus (`S`).
    pub const PARAMETER_STATUS: u8 = b'S';
    /// Backend: BackendKeyData (`K`).
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// Backend: ReadyForQuery (`Z`).
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// Backend: ErrorResponse (`E`).
    pub const ERROR_RESPONSE: u8 = b'E';
    /// Backend: NoticeResponse (`N`).
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// Backend: NegotiateProtocolVersion (`v`).
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// Frontend: simple Query (`Q`).
    pub const QUERY: u8 = b'Q';
    /// Frontend: Parse of the extended query protocol (`P`).
    pub const PARSE: u8 = b'P';
    /// Frontend: Terminate (`X`).
    pub const TERMINATE: u8 = b'X';
    /// Frontend: fast-path FunctionCall (`F`).
    pub const FUNCTION_CALL: u8 = b'F';
}

/// Severity of an ErrorResponse, as both the localized `S` and the stable `V` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The session ends after this error.
    Fatal,
    /// The current command failed; the session goes on.
    Error,
}

impl Severity {
    /// The wire spelling (`FATAL`, `ERROR`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
        }
    }
}

/// A packet sent before the startup is complete: these carry no type byte, only a length
/// and a 32-bit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption, which the gateway declines.
    GssEncRequest,
    /// The client asks to cancel the query running in another session.
    CancelRequest {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
    /// The StartupMessage proper.
    Startup(StartupMessage),
}

/// A decoded StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The minor protocol version requested (the major is always 3).
    pub minor_version: u16,
    /// Parameters in the order the client sent them, protocol extensions (`_pq_.*`) included.
    pub params: Vec<(String, String)>,
}

/// Decodes a startup-phase packet body (everything after the 4-byte length).
pub fn decode_startup_packet(body: &[u8]) -> Result<StartupPacket, ProxyError> {
    let code = read_i32(body, 0)
        .ok_or_else(|| ProxyError::Protocol("startup packet shorter than its code".into()))?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if body.len() != 4 => Err(ProxyError::Protocol(
            "encryption request with a wrong length".into(),
        )),
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => match (body.len(), read_i32(body, 4), read_i32(body, 8)) {
            (12, Some(pid), Some(secret)) => Ok(StartupPacket::CancelRequest { pid, secret }),
            _ => Err(ProxyError::Protocol(
                "cancel request with a wrong length".into(),
            )),
        },
        version if version >> 16 == 3 => {
            let params = decode_startup_params(&body[4..])?;
            Ok(StartupPacket::Startup(StartupMessage {
                minor_version: (version & 0xffff) as u16,
                params,
            }))
        }
        version => Err(ProxyError::UnsupportedProtocol {
            major: version >> 16,
            minor: version & 0xffff,
        }),
    }
}

/// Decodes the `name\0value\0...\0` list of a StartupMessage.
fn decode_startup_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, ProxyError> {
    let mut params = Vec::new();
    loop {
        let (name, after_name) = split_cstr(rest)
            .ok_or_else(|| ProxyError::Protocol("startup parameters not terminated".into()))?;
        if name.is_empty() {
            if !after_name.is_empty() {
                return Err(ProxyError::Protocol(
                    "bytes after the startup parameter list".into(),
                ));
            }
            return Ok(params);
        }
        let (value, after_value) = split_cstr(after_name)
            .ok_or_else(|| ProxyError::Protocol("startup parameter without a value".into()))?;
        params.push((utf8(name)?, utf8(value)?));
        rest = after_value;
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ProxyError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ProxyError::Protocol("startup parameter is not UTF-8".into()))
}

/// Splits a NUL-terminated string off the front of `bytes`; `None` when there is no NUL.
pub(crate) fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

/// Splits a C string off the front of a body that may have been cut short: without a NUL,
/// the whole input is the string.
fn split_cstr_lenient(bytes: &[u8]) -> (&[u8], &[u8]) {
    split_cstr(bytes).unwrap_or((bytes, &[]))
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    let chunk = bytes.get(at..at + 4)?;
    Some(i32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
}

/// Reads one startup-phase packet: a 4-byte length (itself included) and its body. The
/// length is checked before anything is allocated.
pub async fn read_startup_packet<S>(stream: &mut S, max_len: usize) -> Result<Vec<u8>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(eof_as_truncated)?;
    read_startup_body(stream, len, max_len).await
}

/// Reads the body of a startup packet whose length bytes have already been read.
pub(crate) async fn read_startup_body<S>(
    stream: &mut S,
    len: [u8; 4],
    max_len: usize,
) -> Result<Vec<u8>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let len = i32::from_be_bytes(len);
    // A startup packet holds at least the length and a code.
    if len < 8 {
        return Err(ProxyError::Protocol(format!(
            "invalid startup packet length {len}"
        )));
    }
    let len = len as usize;
    if len > max_len {
        return Err(ProxyError::StartupTooLarge(len));
    }
    let mut body = vec![0u8; len - 4];
    stream
        .read_exact(&mut body)
        .await
        .map_err(eof_as_truncated)?;
    Ok(body)
}

/// A typed message read whole: `raw` holds the type byte, the length and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The type byte.
    pub tag: u8,
    /// The whole message as it was on the wire.
    pub raw: Bytes,
}

impl RawMessage {
    /// The body after the type byte and the length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Reads one typed message (type byte, length, body). Refuses messages longer than
/// `max_len` before allocating them.
pub async fn read_message<S>(stream: &mut S, max_len: usize) -> Result<RawMessage, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .await
        .map_err(eof_as_truncated)?;
    let len = body_len([header[1], header[2], header[3], header[4]])? + 4;
    if len > max_len {
        return Err(ProxyError::Protocol(format!(
            "message of {len} bytes exceeds the limit of {max_len}"
        )));
    }
    let mut raw = BytesMut::with_capacity(len + 1);
    raw.extend_from_slice(&header);
    raw.resize(len + 1, 0);
    stream
        .read_exact(&mut raw[5..])
        .await
        .map_err(eof_as_truncated)?;
    Ok(RawMessage {
        tag: header[0],
        raw: raw.freeze(),
    })
}

/// The body length of a typed message from its length field (which counts itself).
pub(crate) fn body_len(len: [u8; 4]) -> Result<usize, ProxyError> {
    let len = i32::from_be_bytes(len);
    if len < 4 {
        return Err(ProxyError::Protocol(format!(
            "invalid message length {len}"
        )));
    }
    Ok(len as usize - 4)
}

// ---- frontend packets and messages -------------------------------------------------------

/// An SSLRequest packet.
pub fn ssl_request() -> [u8; 8] {
    code_packet(SSL_REQUEST_CODE)
}

/// A GSSENCRequest packet.
pub fn gssenc_request() -> [u8; 8] {
    code_packet(GSSENC_REQUEST_CODE)
}

fn code_packet(code: i32) -> [u8; 8] {
    let mut packet = [0u8; 8];
    packet[..4].copy_from_slice(&8i32.to_be_bytes());
    packet[4..].copy_from_slice(&code.to_be_bytes());
    packet
}

/// A CancelRequest packet.
pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[..4].copy_from_slice(&16i32.to_be_bytes());
    packet[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    packet[8..12].copy_from_slice(&pid.to_be_bytes());
    packet[12..].copy_from_slice(&secret.to_be_bytes());
    packet
}

/// A protocol 3.0 StartupMessage carrying `params` in order.
pub fn startup_message(params: &[(String, String)]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0); // length, patched below
    buf.put_i32(PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(&mut buf, name);
        put_cstr(&mut buf, value);
    }
    buf.put_u8(0);
    patch_len(&mut buf, 0);
    buf.freeze()
}

/// A simple Query message.
pub fn query(sql: &str) -> Bytes {
    typed(tag::QUERY, |buf| put_cstr(buf, sql))
}

/// A Parse message for statement `name` with no declared parameter types.
pub fn parse(name: &str, sql: &str) -> Bytes {
    typed(tag::PARSE, |buf| {
        put_cstr(buf, name);
        put_cstr(buf, sql);
        buf.put_i16(0);
    })
}

/// A Terminate message.
pub fn terminate() -> Bytes {
    typed(tag::TERMINATE, |_| {})
}

/// The SQL text of a `Query` body, which may have been cut short.
pub fn decode_query(body: &[u8]) -> &[u8] {
    split_cstr_lenient(body).0
}

/// The statement name and SQL text of a `Parse` body, which may have been cut short.
pub fn decode_parse(body: &[u8]) -> (&[u8], &[u8]) {
    let (statement, rest) = split_cstr_lenient(body);
    (statement, split_cstr_lenient(rest).0)
}

/// The function OID of a fast-path `FunctionCall` body; 0 when it is too short to hold one.
pub fn decode_function_call_oid(body: &[u8]) -> u32 {
    read_i32(body, 0).map_or(0, |oid| oid as u32)
}

// ---- backend messages --------------------------------------------------------------------

/// AuthenticationOk.
pub fn authentication_ok() -> Bytes {
    typed(tag::AUTHENTICATION, |buf| buf.put_i32(0))
}

/// An authentication request with an arbitrary code and payload (used by tests to play a
/// server that wants a password or SASL).
pub fn authentication_request(code: i32, payload: &[u8]) -> Bytes {
    typed(tag::AUTHENTICATION, |buf| {
        buf.put_i32(code);
        buf.put_slice(payload);
    })
}

/// ParameterStatus.
pub fn parameter_status(name: &str, value: &str) -> Bytes {
    typed(tag::PARAMETER_STATUS, |buf| {
        put_cstr(buf, name);
        put_cstr(buf, value);
    })
}

/// BackendKeyData with a protocol 3.0 (4-byte) secret.
pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    typed(tag::BACKEND_KEY_DATA, |buf| {
        buf.put_i32(pid);
        buf.put_i32(secret);
    })
}

/// ReadyForQuery with transaction status `I`, `T` or `E`.
pub fn ready_for_query(status: u8) -> Bytes {
    typed(tag::READY_FOR_QUERY, |buf| buf.put_u8(status))
}

/// NegotiateProtocolVersion: the newest minor version the gateway supports and the
/// protocol extensions it did not recognise.
pub fn negotiate_protocol_version(newest_minor: i32, unrecognized: &[String]) -> Bytes {
    typed(tag::NEGOTIATE_PROTOCOL_VERSION, |buf| {
        buf.put_i32(newest_minor);
        buf.put_i32(unrecognized.len() as i32);
        for option in unrecognized {
            put_cstr(buf, option);
        }
    })
}

/// An ErrorResponse with the fields psql prints: severity (`S` and `V`), SQLSTATE (`C`)
/// and message (`M`).
pub fn error_response(severity: Severity, sqlstate: &str, message: &str) -> Bytes {
    fields_message(
        tag::ERROR_RESPONSE,
        severity.as_str(),
        sqlstate,
        message,
        None,
    )
}

/// An ErrorResponse with severity, SQLSTATE, message and, when given, a detail (`D`, which
/// psql prints as `DETAIL:`).
pub fn error_response_with_detail(
    severity: Severity,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
) -> Bytes {
    fields_message(
        tag::ERROR_RESPONSE,
        severity.as_str(),
        sqlstate,
        message,
        detail,
    )
}

/// A NoticeResponse with severity, SQLSTATE and message.
pub fn notice_response(severity: &str, sqlstate: &str, message: &str) -> Bytes {
    fields_message(tag::NOTICE_RESPONSE, severity, sqlstate, message, None)
}

fn fields_message(
    tag: u8,
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
) -> Bytes {
    typed(tag, |buf| {
        let detail = detail.map(|d| (b'D', d));
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', sqlstate),
            (b'M', message),
        ]
        .into_iter()
        .chain(detail)
        {
            buf.put_u8(field);
            put_cstr(buf, value);
        }
        buf.put_u8(0);
    })
}

/// The fields of an ErrorResponse or NoticeResponse that the gateway reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `V` (non-localized) severity, or `S` when the server sent no `V`.
    pub severity: String,
    /// `C`.
    pub sqlstate: String,
    /// `M`.
    pub message: String,
    /// `D`, when sent.
    pub detail: Option<String>,
}

impl ErrorFields {
    /// Decodes the body of an ErrorResponse or NoticeResponse. Unknown fields are skipped;
    /// text that is not UTF-8 is replaced rather than refused, since it is only reported.
    pub fn decode(mut body: &[u8]) -> Result<ErrorFields, ProxyError> {
        let mut fields = ErrorFields::default();
        let mut localized_severity = None;
        loop {
            let (&field, rest) = body
                .split_first()
                .ok_or_else(|| ProxyError::Protocol("error fields not terminated".into()))?;
            if field == 0 {
                break;
            }
            let (value, rest) = split_cstr(rest)
                .ok_or_else(|| ProxyError::Protocol("error field not terminated".into()))?;
            let value = String::from_utf8_lossy(value).into_owned();
            match field {
                b'S' => localized_severity = Some(value),
                b'V' => fields.severity = value,
                b'C' => fields.sqlstate = value,
                b'M' => fields.message = value,
                b'D' => fields.detail = Some(value),
                _ => {}
            }
            body = rest;
        }
        if fields.severity.is_empty() {
            fields.severity = localized_severity.unwrap_or_default();
        }
        Ok(fields)
    }
}

/// Decodes an authentication request: `None` for AuthenticationOk, otherwise what the server
/// asks for instead.
pub fn decode_authentication(body: &[u8]) -> Result<Option<AuthenticationKind>, ProxyError> {
    let code = read_i32(body, 0)
        .ok_or_else(|| ProxyError::Protocol("short authentication message".into()))?;
    Ok(match code {
        0 => None,
        3 => Some(AuthenticationKind::CleartextPassword),
        5 => Some(AuthenticationKind::Md5Password),
        7 | 9 => Some(AuthenticationKind::Gss),
        10 => Some(AuthenticationKind::Sasl(
            body[4..]
                .split(|&b| b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect(),
        )),
        other => Some(AuthenticationKind::Other(other)),
    })
}

/// Decodes a ParameterStatus body into its name and value.
pub fn decode_parameter_status(body: &[u8]) -> Result<(String, String), ProxyError> {
    let malformed = || ProxyError::Protocol("malformed ParameterStatus".into());
    let (name, rest) = split_cstr(body).ok_or_else(malformed)?;
    let (value, _) = split_cstr(rest).ok_or_else(malformed)?;
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// Decodes a BackendKeyData body with a protocol 3.0 (4-byte) secret.
pub fn decode_backend_key_data(body: &[u8]) -> Result<BackendKey, ProxyError> {
    match (body.len(), read_i32(body, 0), read_i32(body, 4)) {
        (8, Some(process_id), Some(secret_key)) => Ok(BackendKey {
            process_id,
            secret_key,
        }),
        _ => Err(ProxyError::Protocol(
            "BackendKeyData with a secret other than 4 bytes".into(),
        )),
    }
}

/// Builds a typed message: type byte, length placeholder, body, then the real length.
fn typed(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(tag);
    buf.put_i32(0);
    body(&mut buf);
    patch_len(&mut buf, 1);
    buf.freeze()
}

fn patch_len(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Writes a C string. An interior NUL would end the string early on the peer's side and
/// desynchronize the message, so NULs are dropped.
fn put_cstr(buf: &mut BytesMut, value: &str) {
    if value.as_bytes().contains(&0) {
        buf.extend(value.bytes().filter(|&b| b != 0));
    } else {
        buf.put_slice(value.as_bytes());
    }
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_request_decodes_as_ssl_request() {
        let packet = ssl_request();
        assert_eq!(
            decode_startup_packet(&packet[4..]).unwrap(),
            StartupPacket::SslRequest
        );
    }

    #[test]
    fn cancel_request_round_trips() {
        let packet = cancel_request(1234, -99);
        assert_eq!(
            decode_startup_packet(&packet[4..]).unwrap(),
            StartupPacket::CancelRequest {
                pid: 1234,
                secret: -99
            }
        );
    }

    #[test]
    fn startup_message_round_trips_params_in_order() {
        let params = vec![
            ("user".to_string(), "alice".to_string()),
            ("database".to_string(), "postgres".to_string()),
            ("application_name".to_string(), "psql".to_string()),
        ];
        let packet = startup_message(&params);
        assert_eq!(
            packet.len(),
            i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize
        );
        let decoded = decode_startup_packet(&packet[4..]).unwrap();
        assert_eq!(
            decoded,
            StartupPacket::Startup(StartupMessage {
                minor_version: 0,
                params
            })
        );
    }

    #[test]
    fn startup_without_final_terminator_is_a_protocol_error() {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice\0");
        assert!(matches!(
            decode_startup_packet(&body),
            Err(ProxyError::Protocol(_))
        ));
    }

    #[test]
    fn unknown_protocol_version_is_refused() {
        let body = (2i32 << 16).to_be_bytes();
        assert!(matches!(
            decode_startup_packet(&body),
            Err(ProxyError::UnsupportedProtocol { major: 2, minor: 0 })
        ));
    }

    #[test]
    fn error_response_fields_decode_back() {
        let msg = error_response(Severity::Fatal, "28000", "no\0pe");
        assert_eq!(msg[0], b'E');
        let fields = ErrorFields::decode(&msg[5..]).unwrap();
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.sqlstate, "28000");
        assert_eq!(fields.message, "nope");
    }

    #[test]
    fn error_response_detail_decodes_back() {
        let msg = error_response_with_detail(
            Severity::Fatal,
            "42501",
            "permission denied for database \"d\"",
            Some("User does not have CONNECT privilege."),
        );
        let fields = ErrorFields::decode(&msg[5..]).unwrap();
        assert_eq!(fields.message, "permission denied for database \"d\"");
        assert_eq!(
            fields.detail.as_deref(),
            Some("User does not have CONNECT privilege.")
        );
        let plain = error_response(Severity::Fatal, "28000", "no");
        assert_eq!(ErrorFields::decode(&plain[5..]).unwrap().detail, None);
    }

    #[test]
    fn unterminated_error_fields_are_a_protocol_error() {
        assert!(ErrorFields::decode(b"SFATAL\0Cxx").is_err());
        assert!(ErrorFields::decode(b"").is_err());
    }

    #[tokio::test]
    async fn read_startup_packet_refuses_oversized_length_before_reading_body() {
        let mut input: &[u8] = &[0x00, 0x01, 0x00, 0x00];
        assert!(matches!(
            read_startup_packet(&mut input, MAX_STARTUP_PACKET_LEN).await,
            Err(ProxyError::StartupTooLarge(65536))
        ));
    }

    #[tokio::test]
    async fn read_message_reports_truncation() {
        let msg = query("select 1");
        let mut input: &[u8] = &msg[..msg.len() - 2];
        assert!(matches!(
            read_message(&mut input, 1024).await,
            Err(ProxyError::Truncated)
        ));
    }
}
