//! Names of provisioned users inside the database.
//!
//! A database keeps names up to a fixed length and silently truncates longer ones, which could
//! make two people alias one role. A dbward name that does not fit is therefore replaced, never
//! cut: `dw-` followed by base64 (standard alphabet, no padding) of the SHA-1 of the whole
//! dbward name, 30 ASCII characters that fit every supported engine.
//!
//! This module only computes names; it does not talk to a database.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Longest role name PostgreSQL keeps (`NAMEDATALEN - 1` bytes).
pub const PG_MAX_NAME_BYTES: usize = 63;

/// Prefix of a hashed name.
pub const HASHED_PREFIX: &str = "dw-";

/// How an engine measures the length of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameLimit {
    /// At most this many bytes of UTF-8 (PostgreSQL).
    Bytes(usize),
    /// At most this many characters (MariaDB, MySQL).
    Chars(usize),
}

impl NameLimit {
    fn fits(self, name: &str) -> bool {
        match self {
            NameLimit::Bytes(max) => name.len() <= max,
            NameLimit::Chars(max) => name.chars().count() <= max,
        }
    }
}

/// The name of a provisioned user in the database: the dbward name when it fits, else its hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DbUserName(String);

impl DbUserName {
    /// Wraps a name that is already in its database form (computed by [`hashed_name`] or one
    /// of the per-engine helpers).
    pub fn new(db_name: impl Into<String>) -> Self {
        DbUserName(db_name.into())
    }

    /// The name as the database knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DbUserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DbUserName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// `name` unchanged if it fits `limit`, else `dw-` + base64(SHA-1(name)).
pub fn hashed_name(name: &str, limit: NameLimit) -> String {
    if limit.fits(name) {
        return name.to_owned();
    }
    let digest = Sha1::digest(name.as_bytes());
    format!("{HASHED_PREFIX}{}", STANDARD_NO_PAD.encode(digest))
}

/// The PostgreSQL role name for a dbward name (63 bytes kept, longer hashed).
pub fn pg_name(dbward_name: &str) -> String {
    hashed_name(dbward_name, NameLimit::Bytes(PG_MAX_NAME_BYTES))
}

/// The PostgreSQL user that dbward provisions for the dbward user `dbward_name`.
pub fn db_user_name(dbward_name: &str) -> DbUserName {
    DbUserName(pg_name(dbward_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_as_they_are() {
        assert_eq!(db_user_name("alice").as_str(), "alice");
        assert_eq!(pg_name("o'brien \"x\" ü"), "o'brien \"x\" ü");
    }

    #[test]
    fn names_of_exactly_63_bytes_are_kept() {
        let name = "a".repeat(63);
        assert_eq!(pg_name(&name), name);
    }

    #[test]
    fn names_over_63_bytes_become_dw_and_base64_sha1() {
        let name = "a".repeat(64);
        let hashed = pg_name(&name);
        // SHA-1 of 64 'a' is 0098ba824b5c16427bd7a1122a5a442a25ec644d.
        let expected = [
            0x00, 0x98, 0xba, 0x82, 0x4b, 0x5c, 0x16, 0x42, 0x7b, 0xd7, 0xa1, 0x12, 0x2a, 0x5a,
            0x44, 0x2a, 0x25, 0xec, 0x64, 0x4d,
        ];
        assert_eq!(hashed, format!("dw-{}", STANDARD_NO_PAD.encode(expected)));
        assert_eq!(hashed.len(), 30);
        assert!(!hashed.ends_with('='));
    }

    #[test]
    fn known_hash_of_a_short_input_matches_the_reference_encoding() {
        // SHA-1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d, base64 "qZk+NkcGgWq6PiVxeFDCbJzQ2J0".
        assert_eq!(
            hashed_name("abc", NameLimit::Bytes(2)),
            "dw-qZk+NkcGgWq6PiVxeFDCbJzQ2J0"
        );
    }

    #[test]
    fn multibyte_names_are_measured_in_bytes_for_postgres() {
        // 32 two-byte characters: 32 characters but 64 bytes.
        let name = "é".repeat(32);
        assert!(pg_name(&name).starts_with("dw-"));
        assert_eq!(hashed_name(&name, NameLimit::Chars(32)), name);
        assert!(hashed_name(&name, NameLimit::Chars(31)).starts_with("dw-"));
    }

    #[test]
    fn different_long_names_get_different_hashes() {
        let a = format!("{}1", "x".repeat(80));
        let b = format!("{}2", "x".repeat(80));
        assert_ne!(pg_name(&a), pg_name(&b));
        assert_eq!(pg_name(&a), pg_name(&a));
    }
}
