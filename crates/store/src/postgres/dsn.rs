//! Reading the `storage.dsn` connection string: libpq URL (`postgres://…?…`) or keyword
//! (`host=… dbname=…`) form.
//!
//! tokio-postgres parses most of it but knows nothing of certificate files and only the
//! `disable`/`prefer`/`require` TLS modes, so the TLS parameters (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`) are taken out here and the rest is handed to
//! [`tokio_postgres::Config`].

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::SslMode;

use crate::error::{Result, StoreError};

/// How the connection uses TLS. Unlike libpq, every mode that uses TLS verifies the server's
/// certificate chain: the store holds CA keys, so an unverified peer is never acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsMode {
    /// `sslmode=disable`: plain text.
    Disable,
    /// `sslmode=prefer` or `allow` (the default): TLS when the server offers it (a Unix socket
    /// never does), chain verified; plain text otherwise.
    Prefer,
    /// `sslmode=require` or `verify-ca`: TLS, chain verified, host name not checked.
    VerifyCa,
    /// `sslmode=verify-full`: TLS, chain and host name verified.
    VerifyFull,
}

/// The TLS parameters of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub mode: TlsMode,
    /// `sslrootcert`: PEM file of the CAs that sign the server certificate; absent or
    /// `system` means the public web roots.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`: a client certificate to present.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A parsed DSN.
#[derive(Debug)]
pub(crate) struct Dsn {
    pub config: tokio_postgres::Config,
    pub tls: TlsParams,
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Io {
        path: PathBuf::from("storage.dsn"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message.into()),
    }
}

/// Parses `dsn`. Error messages never repeat the DSN, which may hold a password.
pub(crate) fn parse(dsn: &str) -> Result<Dsn> {
    let trimmed = dsn.trim();
    let (rest, tls_pairs) =
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            split_url(trimmed)?
        } else {
            split_keywords(trimmed)?
        };
    let mut tls = TlsParams {
        mode: TlsMode::Prefer,
        root_cert: None,
        client_cert: None,
        client_key: None,
    };
    for (key, value) in tls_pairs {
        match key.as_str() {
            "sslmode" => {
                tls.mode = match value.as_str() {
                    "disable" => TlsMode::Disable,
                    "allow" | "prefer" => TlsMode::Prefer,
                    "require" | "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    other => return Err(invalid(format!("unknown sslmode {other:?}"))),
                }
            }
            "sslrootcert" if value != "system" => tls.root_cert = Some(PathBuf::from(value)),
            "sslrootcert" => tls.root_cert = None,
            "sslcert" => tls.client_cert = Some(PathBuf::from(value)),
            _ => tls.client_key = Some(PathBuf::from(value)),
        }
    }
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        return Err(invalid("sslcert and sslkey must be given together"));
    }
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| invalid(format!("invalid connection string: {e}")))?;
    config.ssl_mode(match tls.mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    });
    Ok(Dsn { config, tls })
}

type Pairs = Vec<(String, String)>;

/// Splits the query of a URL DSN into the TLS parameters and the rest of the URL.
fn split_url(url: &str) -> Result<(String, Pairs)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        let key = percent_decode(key)?;
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, percent_decode(value)?));
        } else {
            kept.push(piece);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| invalid("bad percent escape in connection URL"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| invalid("connection URL is not UTF-8 once decoded"))
}

/// Splits a keyword DSN into the TLS parameters and the rest, re-quoted.
fn split_keywords(dsn: &str) -> Result<(String, Pairs)> {
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for (key, value) in keyword_pairs(dsn)? {
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), tls))
}

/// The `key=value` pairs of a keyword DSN, with libpq's quoting: a value is either a run of
/// non-space characters or single-quoted, and a backslash escapes the next character.
fn keyword_pairs(dsn: &str) -> Result<Pairs> {
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(format!("missing \"=\" after {key:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => {
                        value.extend(chars.next());
                    }
                    Some(c) => value.push(c),
                    None => return Err(invalid(format!("unterminated quote in {key:?}"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    #[test]
    fn keyword_dsn_tls_parameters_are_taken_out_and_the_rest_parsed() -> Result<()> {
        let dsn = parse(
            "host=db1 port=5433 user=dbward dbname='my db' password='it\\'s' \
             sslmode=verify-full sslrootcert=/etc/ca.pem sslcert = /c.crt sslkey=/c.key",
        )?;
        assert_eq!(dsn.tls.mode, TlsMode::VerifyFull);
        assert_eq!(dsn.tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(dsn.tls.client_cert, Some(PathBuf::from("/c.crt")));
        assert_eq!(dsn.tls.client_key, Some(PathBuf::from("/c.key")));
        assert_eq!(dsn.config.get_hosts(), [Host::Tcp("db1".into())]);
        assert_eq!(dsn.config.get_ports(), [5433]);
        assert_eq!(dsn.config.get_dbname(), Some("my db"));
        assert_eq!(dsn.config.get_password(), Some(&b"it's"[..]));
        assert_eq!(dsn.config.get_ssl_mode(), SslMode::Require);
        Ok(())
    }

    #[test]
    fn url_dsn_tls_parameters_are_decoded_and_other_parameters_kept() -> Result<()> {
        let dsn = parse(
            "postgres://dbward:pw@db1:5432/dbward?sslmode=require&sslrootcert=%2Fca%20dir%2Fca.pem\
             &connect_timeout=5",
        )?;
        assert_eq!(dsn.tls.mode, TlsMode::VerifyCa);
        assert_eq!(dsn.tls.root_cert, Some(PathBuf::from("/ca dir/ca.pem")));
        assert_eq!(
            dsn.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        assert_eq!(dsn.config.get_dbname(), Some("dbward"));
        Ok(())
    }

    #[test]
    fn default_is_prefer_and_disable_turns_tls_off() -> Result<()> {
        assert_eq!(parse("host=/run/pg dbname=x")?.tls.mode, TlsMode::Prefer);
        let off = parse("postgresql://h/x?sslmode=disable")?;
        assert_eq!(off.tls.mode, TlsMode::Disable);
        assert_eq!(off.config.get_ssl_mode(), SslMode::Disable);
        Ok(())
    }

    #[test]
    fn bad_dsns_are_rejected_without_echoing_them() {
        for bad in [
            "host=h sslmode=sometimes",
            "host=h sslcert=/c.crt",
            "host=h password='secret",
            "host",
            "host=h bogus=1",
        ] {
            match parse(bad) {
                Err(e) => assert!(!e.to_string().contains("secret"), "{e}"),
                Ok(_) => panic!("accepted {bad:?}"),
            }
        }
    }
}
