//! The `role` resource: what a dbward user may reach, as whom, with which database roles.
//!
//! The field names follow Teleport's role v7 so that existing role files load unchanged;
//! fields dbward does not use are reported as warnings by the resource parser.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::labels::string_list;
use crate::{Labels, Metadata, ModelError, Permission};

/// Role versions accepted from files. Their semantics are the same in dbward.
pub const ROLE_VERSIONS: [&str; 3] = ["v5", "v6", "v7"];

/// The role every user dbward creates is a member of (both engines); never a db role to grant.
pub const RESERVED_MARKER_ROLE: &str = "dbward-auto-user";

/// Prefix of the all-in-one roles dbward creates for MariaDB users; never a db role to grant.
pub const RESERVED_ROLE_PREFIX: &str = "dw-role-";

/// Why an `allow.db_roles` entry can never be granted, whatever it expands to, or `None`.
///
/// Only names that are dbward's own in every database are refused here. The rest of the rule
/// (the admin user, managed users, superuser roles, PostgreSQL's predefined `pg_*` roles,
/// which a `db` resource may allow) depends on the database and on trait values, and is
/// enforced by the provisioner at activation.
fn reserved_db_role(role: &str) -> Option<&'static str> {
    if role == RESERVED_MARKER_ROLE {
        Some("it is the role that marks the users dbward manages")
    } else if role.starts_with(RESERVED_ROLE_PREFIX) {
        Some("\"dw-role-*\" roles belong to the users dbward creates")
    } else {
        None
    }
}

/// A role: options plus allow and deny conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// `v7` (also `v5`, `v6`).
    #[serde(default = "default_role_version")]
    pub version: String,
    /// Name and labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// Options and conditions.
    #[serde(default)]
    pub spec: RoleSpec,
}

fn default_role_version() -> String {
    "v7".to_string()
}

/// The body of a role.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoleSpec {
    /// Session and provisioning options.
    #[serde(default, skip_serializing_if = "RoleOptions::is_empty")]
    pub options: RoleOptions,
    /// What the role grants.
    #[serde(default, skip_serializing_if = "RoleConditions::is_empty")]
    pub allow: RoleConditions,
    /// What the role takes away, whatever other roles grant.
    #[serde(default, skip_serializing_if = "RoleConditions::is_empty")]
    pub deny: RoleConditions,
}

/// Role options that dbward uses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoleOptions {
    /// Automatic database user provisioning mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_db_user_mode: Option<CreateDbUserMode>,
    /// Legacy switch: `true` means `keep` when no mode is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_db_user: Option<bool>,
    /// Upper bound for certificates issued to holders of this role.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::serde_opt_duration"
    )]
    pub max_session_ttl: Option<Duration>,
}

impl RoleOptions {
    fn is_empty(&self) -> bool {
        self == &RoleOptions::default()
    }

    /// The provisioning mode this role asks for, after applying the legacy
    /// `create_db_user: true` and treating `unspecified` as `off`.
    pub fn effective_db_user_mode(&self) -> CreateDbUserMode {
        match self.create_db_user_mode {
            Some(CreateDbUserMode::Keep) => CreateDbUserMode::Keep,
            Some(CreateDbUserMode::BestEffortDrop) => CreateDbUserMode::BestEffortDrop,
            Some(CreateDbUserMode::Off) => CreateDbUserMode::Off,
            Some(CreateDbUserMode::Unspecified) | None => {
                if self.create_db_user == Some(true) {
                    CreateDbUserMode::Keep
                } else {
                    CreateDbUserMode::Off
                }
            }
        }
    }
}

/// `create_db_user_mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreateDbUserMode {
    /// Written as `unspecified` (or empty): falls back to the legacy switch.
    Unspecified,
    /// No provisioning.
    Off,
    /// Create users, lock them at session end.
    Keep,
    /// Create users, drop them at session end when possible.
    BestEffortDrop,
}

impl CreateDbUserMode {
    /// The name as written in role files.
    pub fn as_str(self) -> &'static str {
        match self {
            CreateDbUserMode::Unspecified => "unspecified",
            CreateDbUserMode::Off => "off",
            CreateDbUserMode::Keep => "keep",
            CreateDbUserMode::BestEffortDrop => "best_effort_drop",
        }
    }
}

impl std::str::FromStr for CreateDbUserMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "unspecified" => Ok(CreateDbUserMode::Unspecified),
            "off" => Ok(CreateDbUserMode::Off),
            "keep" => Ok(CreateDbUserMode::Keep),
            "best_effort_drop" => Ok(CreateDbUserMode::BestEffortDrop),
            other => Err(ModelError::invalid(
                "create_db_user_mode",
                format!("unknown value \"{other}\", expected off, keep or best_effort_drop"),
            )),
        }
    }
}

impl Serialize for CreateDbUserMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CreateDbUserMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One side (allow or deny) of a role.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoleConditions {
    /// Which databases (by their labels) this side applies to.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub db_labels: Labels,
    /// Database names (literal, `*`, or trait templates).
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub db_names: Vec<String>,
    /// Database users, used when provisioning is off.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub db_users: Vec<String>,
    /// Database roles granted to provisioned users.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub db_roles: Vec<String>,
    /// Fine-grained table permissions for provisioned PostgreSQL users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db_permissions: Vec<DbPermission>,
}

impl RoleConditions {
    /// True when nothing at all is set.
    pub fn is_empty(&self) -> bool {
        self == &RoleConditions::default()
    }
}

/// Permissions on the database objects whose labels match `match`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DbPermission {
    /// Object label selector (`object_kind: table`, `schema: public`, …).
    #[serde(rename = "match", default)]
    pub match_labels: Labels,
    /// `SELECT`, `INSERT`, … (`*` in deny only).
    #[serde(default, deserialize_with = "string_list")]
    pub permissions: Vec<String>,
}

impl Role {
    /// The resource kind as written in files.
    pub const KIND: &'static str = "role";

    /// A role with the given name and empty spec.
    pub fn new(name: &str) -> Self {
        Role {
            version: default_role_version(),
            metadata: Metadata::named(name),
            spec: RoleSpec::default(),
        }
    }

    /// Upper-cases permission names so that `select` and `SELECT` are the same.
    pub fn normalize(&mut self) {
        for side in [&mut self.spec.allow, &mut self.spec.deny] {
            for perm in &mut side.db_permissions {
                for p in &mut perm.permissions {
                    *p = p.trim().to_ascii_uppercase();
                }
            }
        }
    }

    /// Checks the rules a role must follow (see the module documentation of `validate`).
    pub fn validate(&self) -> Result<(), ModelError> {
        let subject = format!("role \"{}\"", self.metadata.name);
        self.metadata.validate(&subject)?;
        if !ROLE_VERSIONS.contains(&self.version.as_str()) {
            return Err(ModelError::invalid(
                subject,
                format!(
                    "unsupported version \"{}\", expected v5, v6 or v7",
                    self.version
                ),
            ));
        }
        if self.spec.allow.db_roles.iter().any(|r| r.trim() == "*") {
            return Err(ModelError::invalid(
                subject,
                "allow.db_roles cannot contain \"*\"; list the database roles to grant",
            ));
        }
        for role in &self.spec.allow.db_roles {
            if let Some(reason) = reserved_db_role(role.trim()) {
                return Err(ModelError::invalid(
                    subject,
                    format!(
                        "allow.db_roles: \"{}\" can never be granted: {reason}",
                        role.trim()
                    ),
                ));
            }
        }
        for (side, conditions) in [("allow", &self.spec.allow), ("deny", &self.spec.deny)] {
            for (i, perm) in conditions.db_permissions.iter().enumerate() {
                for p in &perm.permissions {
                    let p = p.trim();
                    if p == "*" {
                        if side == "allow" {
                            return Err(ModelError::invalid(
                                subject,
                                format!("allow.db_permissions[{i}]: \"*\" is only allowed in deny rules"),
                            ));
                        }
                        continue;
                    }
                    if p.parse::<Permission>().is_err() {
                        return Err(ModelError::invalid(
                            subject,
                            format!(
                                "{side}.db_permissions[{i}]: unknown permission \"{p}\", expected one of {}",
                                Permission::NAMES.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(yaml: &str) -> Role {
        let mut role: Role = serde_yaml_ng::from_str(yaml).unwrap();
        role.normalize();
        role
    }

    #[test]
    fn legacy_create_db_user_true_means_keep() {
        let r = role("metadata: {name: a}\nspec:\n  options: {create_db_user: true}\n");
        assert_eq!(
            r.spec.options.effective_db_user_mode(),
            CreateDbUserMode::Keep
        );
        let r = role(
            "metadata: {name: a}\nspec:\n  options: {create_db_user: true, create_db_user_mode: off}\n",
        );
        assert_eq!(
            r.spec.options.effective_db_user_mode(),
            CreateDbUserMode::Off
        );
        let r = role("metadata: {name: a}\n");
        assert_eq!(
            r.spec.options.effective_db_user_mode(),
            CreateDbUserMode::Off
        );
        let r = role(
            "metadata: {name: a}\nspec:\n  options: {create_db_user_mode: best_effort_drop}\n",
        );
        assert_eq!(
            r.spec.options.effective_db_user_mode(),
            CreateDbUserMode::BestEffortDrop
        );
    }

    #[test]
    fn star_is_refused_in_allowed_db_roles_but_not_in_denied() {
        let r = role("metadata: {name: a}\nspec:\n  allow: {db_roles: ['*']}\n");
        assert!(r.validate().is_err());
        let r = role("metadata: {name: a}\nspec:\n  deny: {db_roles: ['*']}\n");
        r.validate().unwrap();
    }

    #[test]
    fn reserved_db_roles_are_refused_in_allow_when_literal() {
        for name in ["dbward-auto-user", "dw-role-alice", " dw-role-bob "] {
            let r = role(&format!(
                "metadata: {{name: a}}\nspec:\n  allow: {{db_roles: [reader, '{name}']}}\n"
            ));
            let err = r.validate().expect_err(name).to_string();
            assert!(err.contains(name.trim()), "{err}");
            // Denying them is harmless.
            role(&format!(
                "metadata: {{name: a}}\nspec:\n  deny: {{db_roles: ['{name}']}}\n"
            ))
            .validate()
            .unwrap();
        }
        // A template can only expand to a dw-role-* name: refused as well.
        assert!(role(
            "metadata: {name: a}\nspec:\n  allow: {db_roles: ['dw-role-{{internal.x}}']}\n"
        )
        .validate()
        .is_err());
        // Other templates are checked at activation, where their value is known.
        role("metadata: {name: a}\nspec:\n  allow: {db_roles: ['{{external.r}}']}\n")
            .validate()
            .unwrap();
        role("metadata: {name: a}\nspec:\n  allow: {db_roles: [reader, dbward-reader, pg_monitor]}\n")
            .validate()
            .unwrap();
    }

    #[test]
    fn star_permission_is_only_allowed_in_deny() {
        let allow = "metadata: {name: a}\nspec:\n  allow:\n    db_permissions: [{match: {name: t}, permissions: ['*']}]\n";
        assert!(role(allow).validate().is_err());
        role(&allow.replace("allow", "deny")).validate().unwrap();
    }

    #[test]
    fn db_labels_values_may_be_strings_or_lists() {
        let r = role("metadata: {name: a}\nspec:\n  allow:\n    db_labels: {env: [dev, test], team: db}\n    db_users: app\n");
        let labels: Vec<_> = r.spec.allow.db_labels.iter().collect();
        assert_eq!(labels[0].1, ["dev", "test"]);
        assert_eq!(labels[1].1, ["db"]);
        assert_eq!(r.spec.allow.db_users, ["app"]);
    }

    #[test]
    fn unsupported_versions_are_refused() {
        let mut r = Role::new("a");
        r.validate().unwrap();
        r.version = "v8".into();
        assert!(r.validate().is_err());
    }
}
