//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay tests: each takes
//! arbitrary bytes, drives one parser of what a client presents (its certificate chain, its
//! certificate signing request), and must never panic.

use std::sync::OnceLock;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::ca::{CaKind, CertAuthority};
use crate::identity::{read_identity, CertUsage, Identity};
use crate::issue::issue_user_cert;
use crate::verify::verify_user_cert;

/// A client certificate chain: `data` is read as one certificate for its identity extension,
/// and as concatenated DER certificates (leaf first) verified against a user CA.
pub fn identity(data: &[u8]) {
    let _ = read_identity(data);
    let chain: Vec<CertificateDer<'_>> = split_der(data).map(CertificateDer::from).collect();
    if !chain.is_empty() {
        let _ = verify_user_cert(&chain, user_ca(), "fuzz", fixed_now());
    }
}

/// A certificate signing request as the login and `db login` bodies carry it: `data` is
/// PEM text when it starts with `-----`, else the DER of a CSR (wrapped in PEM here).
pub fn csr(data: &[u8]) {
    let pem = if data.starts_with(b"-----") {
        String::from_utf8_lossy(data).into_owned()
    } else {
        pem_wrap("CERTIFICATE REQUEST", data)
    };
    let identity = Identity {
        username: "alice".into(),
        cluster: "fuzz".into(),
        usage: CertUsage::Login,
        expires: fixed_now() + time::Duration::hours(1),
        route: None,
        pinned_ip: None,
        mfa_session_until: None,
    };
    let _ = issue_user_cert(user_ca(), &identity, &pem);
}

/// A fixed instant, so that an input behaves the same on every run.
fn fixed_now() -> OffsetDateTime {
    // 2026-06-01T00:00:00Z
    OffsetDateTime::from_unix_timestamp(1_780_272_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn user_ca() -> &'static CertAuthority {
    static CA: OnceLock<CertAuthority> = OnceLock::new();
    CA.get_or_init(|| CertAuthority::generate(CaKind::User, "fuzz").expect("a user CA"))
}

/// Splits `data` into DER TLVs (definite lengths only); stops at the first that does not fit.
fn split_der(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&first, rest) = data.get(1..).and_then(|r| r.split_first())?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + count)
        };
        let end = header.checked_add(len)?;
        let tlv = data.get(..end)?;
        data = &data[end..];
        Some(tlv)
    })
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(der.len() * 4 / 3 + 4);
    for group in der.chunks(3) {
        let bytes = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= group.len() {
                encoded.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                encoded.push('=');
            }
        }
    }
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_wrap_encodes_base64_with_padding() {
        assert_eq!(
            pem_wrap("X", b"foob"),
            "-----BEGIN X-----\nZm9vYg==\n-----END X-----\n"
        );
        assert_eq!(
            pem_wrap("X", b"fooba"),
            "-----BEGIN X-----\nZm9vYmE=\n-----END X-----\n"
        );
        assert_eq!(
            pem_wrap("X", b"foobar"),
            "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n"
        );
    }

    #[test]
    fn split_der_yields_each_certificate_of_a_chain() {
        let chain = [&[0x30, 2, 1, 2][..], &[0x30, 0x81, 1, 9][..]].concat();
        let parts: Vec<&[u8]> = split_der(&chain).collect();
        assert_eq!(parts, vec![&[0x30, 2, 1, 2][..], &[0x30, 0x81, 1, 9][..]]);
        assert_eq!(split_der(&[0x30, 5, 1]).count(), 0);
    }
}
