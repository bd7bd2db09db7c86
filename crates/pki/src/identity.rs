//! The dbward identity carried by user certificates, and its encoding in one X.509 extension.
//!
//! The extension value is a DER UTF8String holding a versioned JSON payload (`{"v":1,...}`).
//! Version 2 adds the pinned source IP (`ip`); a certificate without one is still written as
//! version 1, so older gateways read it, and one with a pinned IP as version 2, which older
//! gateways refuse instead of ignoring the pin. Version 3 adds the MFA mark (`mfa`): the
//! database certificate was issued after a fresh one-time code (the role option
//! `require_session_mfa`), and `mfa` holds the end of the login certificate it came from,
//! which sessions opened with it may last until. Version 4 carries [`ClusterClaims`] (the leaf
//! cluster a root's database route leads to; the home roles and traits a root cluster vouches
//! for in certificates it mints for a trusted leaf), with the pin and the MFA mark optional. A
//! certificate is written with the lowest version that holds what it says, so older gateways
//! read it or refuse it instead of ignoring a restriction. Versions 1 to 4 are read; any other
//! is refused.
//! Reading an identity does not check who signed the certificate: call [`read_identity`] only
//! on a certificate whose chain was verified (by a TLS handshake with a client verifier, or by
//! `verify_user_cert`).

use ::time::OffsetDateTime;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

use crate::error::{PkiError, Result};

/// The private OID of the identity extension.
pub const IDENTITY_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 59934, 1, 1];
const IDENTITY_EXTENSION_OID_STR: &str = "1.3.6.1.4.1.59934.1.1";

/// The payload version of certificates without a pinned IP.
const IDENTITY_VERSION: u64 = 1;
/// The payload version of certificates with a pinned IP.
const IDENTITY_VERSION_PINNED: u64 = 2;
/// The payload version of MFA-verified database certificates (with or without a pinned IP).
const IDENTITY_VERSION_MFA: u64 = 3;
/// The payload version of certificates with cluster claims (pin and MFA mark optional).
const IDENTITY_VERSION_CLAIMS: u64 = 4;

/// What a certificate says about clusters other than the one it was issued in. Kept apart
/// from [`Identity`]: a gateway reads these only where it has decided to trust them (a leaf
/// takes roles and traits only from a certificate signed by a trusted root's user CA, never
/// from one of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterClaims {
    /// A database route of a root cluster's certificate: the leaf cluster whose database it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_cluster: Option<String>,
    /// The user's roles in the issuing cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The user's traits in the issuing cluster.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub traits: std::collections::BTreeMap<String, Vec<String>>,
}

impl ClusterClaims {
    /// Whether there is anything to write.
    pub fn is_empty(&self) -> bool {
        self.route_cluster.is_none() && self.roles.is_empty() && self.traits.is_empty()
    }
}

/// What a user certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertUsage {
    /// General login certificate (web API, listing resources).
    Login,
    /// Certificate for connecting to one database; carries a route.
    Db,
    /// Administrative access to the dbward API.
    Admin,
}

/// Where a database certificate leads: the database resource and what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRoute {
    /// Name of the database resource.
    pub service: String,
    /// Database user to connect as, when chosen at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_user: Option<String>,
    /// Database name, when chosen at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_name: Option<String>,
    /// Requested subset of database roles (`--db-roles`); empty means all allowed roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_roles: Vec<String>,
}

/// Who a user certificate speaks for. Roles and traits are deliberately absent: they are read
/// from the store at connect time so changes take effect at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub username: String,
    pub cluster: String,
    pub usage: CertUsage,
    /// End of validity; equal to the certificate's notAfter (whole seconds).
    #[serde(with = "::time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<DbRoute>,
    /// The client address the certificate is valid from (the role option `pin_source_ip`),
    /// recorded at login and copied into database certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_ip: Option<std::net::IpAddr>,
    /// Set on a database certificate issued after a fresh one-time code (the role option
    /// `require_session_mfa`): the end of the login certificate it was issued with. The
    /// certificate itself is valid for a minute, enough to open sessions; a session opened
    /// with it lasts until this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "::time::serde::rfc3339::option"
    )]
    pub mfa_session_until: Option<OffsetDateTime>,
}

impl Identity {
    /// When a session opened with this certificate must end: the certificate's own expiry,
    /// or for an MFA-verified database certificate the end of the login it came from.
    pub fn session_expires(&self) -> OffsetDateTime {
        self.mfa_session_until.unwrap_or(self.expires)
    }
}

/// The JSON written into the extension. Separate from [`Identity`] so the wire format is
/// explicit and versioned independently of the Rust type.
#[derive(Serialize, Deserialize)]
struct IdentityPayload {
    v: u64,
    user: String,
    cluster: String,
    usage: CertUsage,
    /// Expiry as Unix seconds.
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    route: Option<DbRoute>,
    /// Version 2 and 3: the pinned source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<std::net::IpAddr>,
    /// Version 3 (always) and 4 (optional): MFA-verified; sessions may last until then (Unix
    /// seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mfa: Option<i64>,
    /// Version 4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<ClusterClaims>,
}

/// Only the version, read first so a newer payload gives a clear error.
#[derive(Deserialize)]
struct PayloadVersion {
    v: u64,
}

/// Encodes the identity as the extension's value (a DER UTF8String of the JSON payload).
pub(crate) fn encode_identity_extension(
    identity: &Identity,
    claims: Option<&ClusterClaims>,
) -> Result<rcgen::CustomExtension> {
    let claims = claims.filter(|c| !c.is_empty());
    let payload = IdentityPayload {
        v: if claims.is_some() {
            IDENTITY_VERSION_CLAIMS
        } else if identity.mfa_session_until.is_some() {
            IDENTITY_VERSION_MFA
        } else if identity.pinned_ip.is_some() {
            IDENTITY_VERSION_PINNED
        } else {
            IDENTITY_VERSION
        },
        user: identity.username.clone(),
        cluster: identity.cluster.clone(),
        usage: identity.usage,
        exp: identity.expires.unix_timestamp(),
        route: identity.route.clone(),
        ip: identity.pinned_ip,
        mfa: identity
            .mfa_session_until
            .map(OffsetDateTime::unix_timestamp),
        claims: claims.cloned(),
    };
    let json = serde_json::to_vec(&payload)
        .map_err(|e| PkiError::InvalidIdentity(format!("cannot encode: {e}")))?;
    let mut value = vec![UTF8_STRING_TAG];
    push_der_length(&mut value, json.len());
    value.extend_from_slice(&json);
    // Non-critical: generic X.509 verifiers (OpenSSL, webpki) must not refuse the certificate
    // for an extension they do not know.
    let mut extension = rcgen::CustomExtension::from_oid_content(IDENTITY_EXTENSION_OID, value);
    extension.set_criticality(false);
    Ok(extension)
}

/// Reads the identity from a certificate.
///
/// This does **not** verify the certificate: only call it after the chain was verified against
/// the user CA, otherwise anyone can write any identity into a self-made certificate.
pub fn read_identity(cert_der: &[u8]) -> Result<Identity> {
    read_identity_and_claims(cert_der).map(|(identity, _)| identity)
}

/// Reads the identity and the cluster claims (empty before version 4) from a certificate.
/// The same warning as [`read_identity`] applies, and more: claims are to be believed only
/// from a certificate of a CA trusted to make them.
pub fn read_identity_and_claims(cert_der: &[u8]) -> Result<(Identity, ClusterClaims)> {
    let (_, cert) = parse_x509_certificate(cert_der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let extension = cert
        .extensions()
        .iter()
        .find(|ext| ext.oid.to_id_string() == IDENTITY_EXTENSION_OID_STR)
        .ok_or(PkiError::MissingIdentity)?;
    let json = decode_utf8_string(extension.value)?;
    let version: PayloadVersion = serde_json::from_slice(json)
        .map_err(|e| PkiError::InvalidIdentity(format!("payload: {e}")))?;
    if ![
        IDENTITY_VERSION,
        IDENTITY_VERSION_PINNED,
        IDENTITY_VERSION_MFA,
        IDENTITY_VERSION_CLAIMS,
    ]
    .contains(&version.v)
    {
        return Err(PkiError::UnsupportedIdentityVersion(version.v));
    }
    let payload: IdentityPayload = serde_json::from_slice(json)
        .map_err(|e| PkiError::InvalidIdentity(format!("payload: {e}")))?;
    // Version 1 never pins; version 2 always does; versions 3 and 4 may.
    if version.v < IDENTITY_VERSION_MFA
        && (version.v == IDENTITY_VERSION_PINNED) != payload.ip.is_some()
    {
        return Err(PkiError::InvalidIdentity(
            "pinned IP does not match the payload version".into(),
        ));
    }
    // Version 3 always carries the MFA mark, version 4 may, 1 and 2 never do.
    if (version.v == IDENTITY_VERSION_MFA && payload.mfa.is_none())
        || (version.v < IDENTITY_VERSION_MFA && payload.mfa.is_some())
    {
        return Err(PkiError::InvalidIdentity(
            "MFA mark does not match the payload version".into(),
        ));
    }
    // Claims only in version 4, and version 4 only with claims.
    if (version.v == IDENTITY_VERSION_CLAIMS)
        != payload.claims.as_ref().is_some_and(|c| !c.is_empty())
    {
        return Err(PkiError::InvalidIdentity(
            "cluster claims do not match the payload version".into(),
        ));
    }

    // The subject and validity are what generic tools show and what the verifier enforces;
    // refuse a certificate whose payload says something else.
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    if common_name != Some(payload.user.as_str()) {
        return Err(PkiError::InvalidIdentity(
            "subject common name does not match the identity".into(),
        ));
    }
    if cert.validity().not_after.timestamp() != payload.exp {
        return Err(PkiError::InvalidIdentity(
            "certificate expiry does not match the identity".into(),
        ));
    }
    let expires = OffsetDateTime::from_unix_timestamp(payload.exp)
        .map_err(|e| PkiError::InvalidIdentity(format!("expiry: {e}")))?;
    let mfa_session_until = payload
        .mfa
        .map(OffsetDateTime::from_unix_timestamp)
        .transpose()
        .map_err(|e| PkiError::InvalidIdentity(format!("MFA session end: {e}")))?;
    // An MFA mark on anything but a database certificate, or one that ends before the
    // certificate does, was not written by this gateway.
    if let Some(until) = mfa_session_until {
        if payload.usage != CertUsage::Db || until < expires {
            return Err(PkiError::InvalidIdentity(
                "MFA mark on a certificate it does not apply to".into(),
            ));
        }
    }
    Ok((
        Identity {
            username: payload.user,
            cluster: payload.cluster,
            usage: payload.usage,
            expires,
            route: payload.route,
            pinned_ip: payload.ip,
            mfa_session_until,
        },
        payload.claims.unwrap_or_default(),
    ))
}

const UTF8_STRING_TAG: u8 = 0x0c;

/// Appends a DER definite length.
pub(crate) fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let significant = &bytes[skip..];
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

/// Decodes a DER UTF8String that must span the whole input.
fn decode_utf8_string(der: &[u8]) -> Result<&[u8]> {
    let malformed = || PkiError::InvalidIdentity("malformed extension value".into());
    let (&tag, rest) = der.split_first().ok_or_else(malformed)?;
    if tag != UTF8_STRING_TAG {
        return Err(malformed());
    }
    let (&first, rest) = rest.split_first().ok_or_else(malformed)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > size_of::<usize>() || rest.len() < count {
            return Err(malformed());
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() != len {
        return Err(malformed());
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_utf8_string_round_trips_short_and_long_lengths() -> Result<()> {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let body = vec![b'x'; len];
            let mut der = vec![UTF8_STRING_TAG];
            push_der_length(&mut der, len);
            der.extend_from_slice(&body);
            assert_eq!(decode_utf8_string(&der)?, body.as_slice());
        }
        Ok(())
    }

    #[test]
    fn truncated_or_mistagged_extension_value_is_rejected() {
        assert!(decode_utf8_string(&[]).is_err());
        assert!(decode_utf8_string(&[UTF8_STRING_TAG, 5, b'a']).is_err());
        assert!(decode_utf8_string(&[0x04, 1, b'a']).is_err());
        assert!(decode_utf8_string(&[UTF8_STRING_TAG, 0x82, 0x01]).is_err());
    }
}
