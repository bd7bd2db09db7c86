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
    #[serde(default)]
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

    /// The label marking a user that single sign-on created: `oidc/<connector>`. Such a user
    /// has no password; its roles and traits are rewritten at each of its logins.
    pub const CREATED_BY_LABEL: &'static str = "dbward.dev/created-by";

    /// The connector that created this user (`oidc/<name>`), if single sign-on did.
    pub fn created_by(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(Self::CREATED_BY_LABEL)
            .map(String::as_str)
    }

    /// A user with a name, roles and no traits: `User::new("alice", &["dev"])` or
    /// `User::new("alice", roles_vec)`.
    pub fn new<R>(name: &str, roles: R) -> Self
    where
        R: IntoIterator,
        R::Item: AsRef<str>,
    {
        User {
            version: default_user_version(),
            metadata: Metadata::named(name),
            spec: UserSpec {
                roles: roles.into_iter().map(|r| r.as_ref().to_string()).collect(),
                traits: BTreeMap::new(),
            },
        }
    }

    /// The same user with these traits.
    pub fn with_traits(mut self, traits: BTreeMap<String, Vec<String>>) -> Self {
        self.spec.traits = traits;
        self
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
            return Err(ModelError::invalid(
                subject,
                "spec.roles contains an empty name",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_accepts_slices_and_vectors_of_role_names() {
        let a = User::new("alice", &["dev", "ops"]);
        let b = User::new("alice", vec!["dev".to_string(), "ops".to_string()]);
        assert_eq!(a, b);
        assert_eq!(a.spec.roles, ["dev", "ops"]);
        a.validate().unwrap();
    }

    #[test]
    fn traits_accept_a_single_value_or_a_list() {
        let user: User = serde_yaml_ng::from_str(
            "metadata: {name: a}\nspec:\n  traits: {db_users: app, db_roles: [r1, r2]}\n",
        )
        .unwrap();
        assert_eq!(user.spec.traits["db_users"], ["app"]);
        assert_eq!(user.spec.traits["db_roles"], ["r1", "r2"]);
    }

    #[test]
    fn empty_role_names_and_other_versions_are_refused() {
        assert!(User::new("a", &[""]).validate().is_err());
        let mut user = User::new("a", &["dev"]);
        user.version = "v3".into();
        assert!(user.validate().is_err());
        assert!(User::new("", &["dev"]).validate().is_err());
    }
}
