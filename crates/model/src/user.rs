//! The `user` resource: a person's dbward roles and traits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::{string_list, string_list_map};
use crate::{Metadata, ModelError};

/// A dbward user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// `v2`.
    #[serde(default = "default_user_version")]
    pub version: String,
    /// The user name is `metadata.name`.
    pub metadata: Metadata,
    /// Roles and traits.
    #[serde(default)]
    pub spec: UserSpec,
}

fn default_user_version() -> String {
    "v2".to_string()
}

/// The body of a user.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserSpec {
    /// Names of the roles the user holds.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    /// Values that role templates (`{{internal.x}}`) expand to.
    #[serde(
        default,
        deserialize_with = "string_list_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub traits: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The resource kind as written in files.
    pub const KIND: &'static str = "user";

    /// A user with a name, roles and no traits.
    pub fn new(name: &str, roles: &[&str]) -> Self {
        User {
            version: default_user_version(),
            metadata: Metadata::named(name),
            spec: UserSpec {
                roles: roles.iter().map(|r| r.to_string()).collect(),
                traits: BTreeMap::new(),
            },
        }
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Checks the name and version.
    pub fn validate(&self) -> Result<(), ModelError> {
        let subject = format!("user \"{}\"", self.metadata.name);
        self.metadata.validate(&subject)?;
        if self.version != "v2" {
            return Err(ModelError::invalid(
                subject,
                format!("unsupported version \"{}\", expected v2", self.version),
            ));
        }
        if self.spec.roles.iter().any(|r| r.trim().is_empty()) {
            return Err(ModelError::invalid(subject, "spec.roles contains an empty name"));
        }
        Ok(())
    }
}
