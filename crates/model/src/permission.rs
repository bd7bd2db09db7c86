//! Table privileges that `db_permissions` may grant (PostgreSQL).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// A table privilege dbward can grant. Anything else is refused when a role is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// `SELECT`
    Select,
    /// `INSERT`
    Insert,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
    /// `TRUNCATE`
    Truncate,
    /// `REFERENCES`
    References,
    /// `TRIGGER`
    Trigger,
}

impl Permission {
    /// Every permission, in SQL spelling.
    pub const NAMES: [&'static str; 7] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
    ];

    /// Every permission.
    pub const ALL: [Permission; 7] = [
        Permission::Select,
        Permission::Insert,
        Permission::Update,
        Permission::Delete,
        Permission::Truncate,
        Permission::References,
        Permission::Trigger,
    ];

    /// The SQL keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Select => "SELECT",
            Permission::Insert => "INSERT",
            Permission::Update => "UPDATE",
            Permission::Delete => "DELETE",
            Permission::Truncate => "TRUNCATE",
            Permission::References => "REFERENCES",
            Permission::Trigger => "TRIGGER",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = ModelError;
    /// Case-insensitive: `select` is `SELECT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == upper)
            .ok_or_else(|| {
                ModelError::invalid(
                    "permission",
                    format!(
                        "unknown permission \"{s}\", expected one of {}",
                        Permission::NAMES.join(", ")
                    ),
                )
            })
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
