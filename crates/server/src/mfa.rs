//! The second factor: one TOTP device (RFC 6238) per local user, kept in the store.
//!
//! A device is a 20-byte secret, shown to the user once as an `otpauth://` URI (base32, the
//! form authenticator apps read), and the last time step a code was accepted for. Codes are
//! HMAC-SHA1, 6 digits, 30-second steps; the previous, current and next step are accepted for
//! clock drift, and a code is used once: a step at or before the last accepted one is refused.
//! Checking and recording the step happen under a per-user store lock, so two logins at the
//! same moment (on one gateway or several sharing the store) cannot both use one code.
//!
//! The secret never leaves this module except in the URI returned at registration: it is
//! not logged, audited, or part of the `user` resource.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use dbward_store::Store;

use crate::GatewayError;

/// Bytes of a device secret (160 bits, the size RFC 4226 recommends for HMAC-SHA1).
pub const SECRET_BYTES: usize = 20;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Seconds per time step.
pub const STEP_SECS: u64 = 30;
/// Longest a code check waits for another check of the same user to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Wrong codes of one user, counted across addresses and gateways, before code checks stop
/// for the rest of [`FAILURE_WINDOW_SECS`]: guessing one of 10^6 codes stays hopeless however
/// many addresses try.
pub const MAX_CODE_FAILURES: u32 = 10;
/// The window over which wrong codes are counted.
pub const FAILURE_WINDOW_SECS: u64 = 3600;

/// What the gateway answers when a code is needed and none was sent; the CLI recognises it
/// to ask for one.
pub const CODE_REQUIRED: &str = "a one-time code is required";
/// What the gateway answers for a wrong, expired or already used code.
pub const CODE_INVALID: &str = "invalid or already used one-time code";

/// A registered device as stored (JSON under [`device_key`]).
#[derive(Clone, Serialize, Deserialize)]
struct Device {
    /// The secret, base32 without padding.
    secret: String,
    /// The last time step a code was accepted for; codes of this step or earlier are refused.
    #[serde(default)]
    last_step: Option<u64>,
}

// Keeps the secret out of any `{:?}` that might reach a log.
impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// The outcome of a code check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// The code was valid and unused; it is now used.
    Accepted,
    /// Wrong, outside the accepted steps, or already used.
    Refused,
    /// The user has no device.
    NoDevice,
    /// Too many wrong codes lately: not checked.
    Locked,
}

/// Wrong codes of one user in the current window (JSON under [`failures_key`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Failures {
    /// Start of the window, Unix seconds.
    since: u64,
    count: u32,
}

fn failures_key(user: &str) -> String {
    format!("mfa/failures/{user}")
}

fn device_key(user: &str) -> String {
    format!("mfa/totp/{user}")
}

fn lock_key(user: &str) -> String {
    format!("mfa/lock/{user}")
}

/// True when `user` has a device.
pub async fn has_device(store: &Store, user: &str) -> Result<bool, GatewayError> {
    Ok(store.kv_get(&device_key(user)).await?.is_some())
}

/// Registers a new device for `user` (replacing any) and returns its `otpauth://` URI, the
/// only time the secret is shown.
pub async fn register(store: &Store, cluster: &str, user: &str) -> Result<String, GatewayError> {
    let mut secret = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| GatewayError::Internal("no randomness for a TOTP secret".into()))?;
    let device = Device {
        secret: base32_encode(&secret),
        last_step: None,
    };
    let json = serde_json::to_string(&device).map_err(|e| GatewayError::Internal(e.to_string()))?;
    store.kv_put(&device_key(user), &json).await?;
    Ok(otpauth_uri(cluster, user, &device.secret))
}

/// Removes the device of `user`, if any (the user was deleted).
pub async fn remove(store: &Store, user: &str) -> Result<bool, GatewayError> {
    store.kv_delete(&failures_key(user)).await?;
    Ok(store.kv_delete(&device_key(user)).await?)
}

/// Checks `code` for `user` now and, when it is accepted, records its step so it cannot be
/// used again.
pub async fn check_code(
    store: &Store,
    holder: &str,
    user: &str,
    code: &str,
) -> Result<CodeCheck, GatewayError> {
    let lock = store.lock(&lock_key(user), holder, LOCK_WAIT).await?;
    let outcome = check_counted(store, user, code, now_secs()).await;
    // Released whatever the outcome; a failed release only delays the next check (lease ttl).
    let _ = lock.release().await;
    outcome
}

/// [`check_code_locked`] within the failure budget of the user.
async fn check_counted(
    store: &Store,
    user: &str,
    code: &str,
    now_secs: u64,
) -> Result<CodeCheck, GatewayError> {
    let mut failures: Failures = match store.kv_get(&failures_key(user)).await? {
        Some(json) => serde_json::from_str(&json).unwrap_or_default(),
        None => Failures::default(),
    };
    if now_secs.saturating_sub(failures.since) >= FAILURE_WINDOW_SECS {
        failures = Failures {
            since: now_secs,
            count: 0,
        };
    }
    if failures.count >= MAX_CODE_FAILURES {
        return Ok(CodeCheck::Locked);
    }
    let outcome = check_code_locked(store, user, code, now_secs / STEP_SECS).await?;
    match outcome {
        CodeCheck::Refused => {
            failures.count += 1;
            let json = serde_json::to_string(&failures)
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            store.kv_put(&failures_key(user), &json).await?;
        }
        CodeCheck::Accepted => {
            store.kv_delete(&failures_key(user)).await?;
        }
        CodeCheck::NoDevice | CodeCheck::Locked => {}
    }
    Ok(outcome)
}

async fn check_code_locked(
    store: &Store,
    user: &str,
    code: &str,
    now: u64,
) -> Result<CodeCheck, GatewayError> {
    let Some(json) = store.kv_get(&device_key(user)).await? else {
        return Ok(CodeCheck::NoDevice);
    };
    let mut device: Device = serde_json::from_str(&json)
        .map_err(|e| GatewayError::Internal(format!("TOTP device of {user}: {e}")))?;
    let Some(secret) = base32_decode(&device.secret) else {
        return Err(GatewayError::Internal(format!(
            "TOTP device of {user}: the secret is not base32"
        )));
    };
    let Some(step) = matching_step(&secret, code, now, device.last_step) else {
        return Ok(CodeCheck::Refused);
    };
    device.last_step = Some(step);
    let json = serde_json::to_string(&device).map_err(|e| GatewayError::Internal(e.to_string()))?;
    store.kv_put(&device_key(user), &json).await?;
    Ok(CodeCheck::Accepted)
}

/// The step among the previous, current and next that `code` belongs to, if it is later than
/// `last_used`. Every candidate is computed and compared, so the time taken does not depend
/// on which one matched.
fn matching_step(secret: &[u8], code: &str, now: u64, last_used: Option<u64>) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for step in [now.saturating_sub(1), now, now.saturating_add(1)] {
        let expected = format!("{:0width$}", code_at(secret, step), width = DIGITS as usize);
        let same = ring_constant_time_eq(expected.as_bytes(), code.as_bytes());
        if same && last_used.is_none_or(|last| step > last) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

fn ring_constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Now, Unix seconds.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The code of one time step (RFC 4226 dynamic truncation of HMAC-SHA1 over the step).
fn code_at(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    binary % 10u32.pow(DIGITS)
}

/// The key URI authenticator apps import (Google Authenticator's format).
fn otpauth_uri(issuer: &str, user: &str, secret: &str) -> String {
    let issuer = percent_encode(&format!("dbward {issuer}"));
    let account = percent_encode(user);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}"
    )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                BASE32_ALPHABET[((buffer >> bits) & 31) as usize],
            ));
        }
    }
    if bits > 0 {
        out.push(char::from(
            BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize],
        ));
    }
    out
}

/// The inverse of [`base32_encode`]; `None` on a character outside the alphabet.
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = BASE32_ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrong_codes_from_anywhere_stop_code_checks_for_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).unwrap();
        let uri = register(&store, "c", "alice").await.unwrap();
        let secret = uri
            .split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let secret = base32_decode(secret).unwrap();
        let t0 = 1_700_000_000u64;
        let right = |t: u64| format!("{:06}", code_at(&secret, t / STEP_SECS));
        for i in 0..MAX_CODE_FAILURES {
            let wrong = format!(
                "{:06}",
                (code_at(&secret, t0 / STEP_SECS) + 1 + i) % 1_000_000
            );
            let got = check_counted(&store, "alice", &wrong, t0 + u64::from(i))
                .await
                .unwrap();
            assert_eq!(got, CodeCheck::Refused);
        }
        // Even the right code is not checked now.
        let got = check_counted(&store, "alice", &right(t0 + 60), t0 + 60)
            .await
            .unwrap();
        assert_eq!(got, CodeCheck::Locked);
        // After the window, the right code works and the count starts again.
        let later = t0 + FAILURE_WINDOW_SECS + 1;
        let got = check_counted(&store, "alice", &right(later), later)
            .await
            .unwrap();
        assert_eq!(got, CodeCheck::Accepted);
        assert!(store
            .kv_get(&failures_key("alice"))
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn codes_match_the_rfc_6238_sha1_test_vectors() {
        // RFC 6238 appendix B, SHA-1, truncated to 6 digits (the RFC prints 8).
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(
                code_at(secret, time / STEP_SECS),
                eight % 1_000_000,
                "{time}"
            );
        }
    }

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_encode(b"f"), "MY");
        for len in 0..=SECRET_BYTES {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            assert_eq!(base32_decode(&base32_encode(&bytes)), Some(bytes));
        }
        assert_eq!(base32_decode("MZXW6YTBOI"), Some(b"foobar".to_vec()));
        assert_eq!(base32_decode("MZ1"), None);
    }

    #[test]
    fn only_neighbouring_unused_steps_are_accepted() {
        let secret = b"12345678901234567890";
        let now = 1_000_000;
        let code = |step| format!("{:06}", code_at(secret, step));
        assert_eq!(matching_step(secret, &code(now), now, None), Some(now));
        assert_eq!(
            matching_step(secret, &code(now - 1), now, None),
            Some(now - 1)
        );
        assert_eq!(
            matching_step(secret, &code(now + 1), now, None),
            Some(now + 1)
        );
        assert_eq!(matching_step(secret, &code(now - 2), now, None), None);
        assert_eq!(matching_step(secret, &code(now + 2), now, None), None);
        // Used once: the same step and earlier ones are refused, a later one is not.
        assert_eq!(matching_step(secret, &code(now), now, Some(now)), None);
        assert_eq!(matching_step(secret, &code(now - 1), now, Some(now)), None);
        assert_eq!(
            matching_step(secret, &code(now + 1), now, Some(now)),
            Some(now + 1)
        );
        for bad in ["", "12345", "1234567", "abcdef", " 12345"] {
            assert_eq!(matching_step(secret, bad, now, None), None, "{bad:?}");
        }
    }

    #[test]
    fn the_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri("prod", "alice smith", "MZXW6YTBOI");
        assert_eq!(
            uri,
            "otpauth://totp/dbward%20prod:alice%20smith?secret=MZXW6YTBOI&issuer=dbward%20prod&algorithm=SHA1&digits=6&period=30"
        );
    }
}
