//! The `role` resource: what a dbward user may reach, as whom, with which database roles.
//!
//! The field names follow Teleport's role (v3 to v8) so that existing role files load
//! unchanged; fields dbward does not use are reported as warnings by the resource parser.
//!
//! # Teleport fields that restrict access
//!
//! A role file must never grant more in dbward than it does in Teleport. Every Teleport role
//! field that can take access away is listed here with what dbward does with it. "Refuses"
//! means the role loads (with a warning naming the field) and every access decision that uses
//! the role refuses the connection; the user sees the generic denial text and the server log
//! names the field ([`RoleOptions::unenforced_restrictions`]). An enforced option whose value
//! dbward cannot read (`max_connections: lots`) refuses the same way.
//!
//! | field | value that restricts | dbward |
//! |---|---|---|
//! | `options.max_session_ttl` | any | enforced: caps the lifetime of the user certificate issued at login (the smallest of the user's roles wins); a database certificate never outlives it |
//! | `options.disconnect_expired_cert` | `true` | enforced, always on: sessions end when their certificate expires (checked every 2 s) |
//! | `options.require_session_mfa` | `true` | enforced, for databases the role's `allow.db_labels` select: `dbward db login` needs a fresh one-time code (TOTP), and the database certificate is valid for one minute and marked MFA-verified; the listeners refuse a certificate without the mark ([`RoleOptions::requires_session_mfa`]) |
//! | `options.require_session_mfa` | `hardware_key`, `hardware_key_touch`, `hardware_key_pin`, `hardware_key_touch_and_pin`, or any other value but `false`/`off` | refuses, for databases the role's `allow.db_labels` select: dbward has no hardware keys |
//! | `options.device_trust_mode` | `required`, `required-for-humans` (anything but `off`/`optional`) | refuses, for databases the role's `allow.db_labels` select |
//! | `options.max_connections` | above 0 | enforced: concurrent database sessions of the user, counted across every gateway sharing the store (the smallest of the user's roles wins); one more is refused with a message naming the limit ([`RoleOptions::max_connections_limit`]) |
//! | `options.client_idle_timeout` | above 0 | enforced: a session whose client sends nothing for that long is closed by the gateway with a message, then torn down (the smallest of the user's roles wins) |
//! | `options.pin_source_ip` | `true` | enforced: login and `db login` write the client's IP address into the certificate; a database connection or an API call from another address, or with a certificate without one, is refused |
//! | `allow`/`deny.db_labels_expression` | any | the file is refused at load: expressions are not evaluated |
//! | `options.lock` | `strict` | warning: dbward reads roles and users from its store at every connect and refuses when it cannot, which is what strict locking asks |
//! | `options.mfa_verification_interval` | any | warning: Teleport's reuse window for a session MFA check; dbward asks for a fresh code at every `db login` to such a database, which is stricter |
//! | `options.record_session` | `strict` | warning: recording modes apply to SSH and desktop sessions; database sessions are audited |
//! | `options.max_sessions`, `max_kubernetes_connections` | above 0 | warning: SSH channels per connection and Kubernetes sessions, which dbward does not serve |
//! | `options.request_access`, `request_prompt` | any | warning: access requests; they never take away what the role grants |
//! | `allow`/`deny.rules` | any | warning: Teleport API permissions on resources; dbward roles grant no API access, so a deny there takes nothing dbward gives |
//! | `allow`/`deny.db_service_labels` | any | warning: Teleport database agents, which dbward does not have |
//! | `allow`/`deny.require_session_join`, `join_sessions` | any | warning: moderated SSH and Kubernetes sessions |
//! | other `options` and conditions (SSH, Kubernetes, apps, desktops, clouds, `request`, `impersonate`, …) | any | warning: they concern resources dbward does not serve |
//!
//! # Role versions
//!
//! `v3` to `v8` load. Teleport's per-version defaults for the fields dbward uses:
//!
//! - `v3`: a missing `allow.db_labels` means `"*": "*"` (every database); an explicit empty
//!   one stays empty. Applied when the file is read, so the stored role shows it.
//! - `v4` to `v8`: a missing `allow.db_labels` selects nothing.
//! - Every version: `create_db_user_mode` unspecified and `create_db_user: false`, which is
//!   provisioning off. Teleport's default `max_session_ttl` (30h) is not applied: dbward's
//!   `cert_ttl` (12h by default) is the default lifetime and a role's `max_session_ttl` only
//!   shortens it.
//!
//! The differences between v5, v6, v7 and v8 concern Kubernetes and SSH fields only.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::labels::string_list;
use crate::{Labels, Metadata, ModelError, Permission};

/// Role versions accepted from files; see the module documentation for how they differ.
pub const ROLE_VERSIONS: [&str; 6] = ["v3", "v4", "v5", "v6", "v7", "v8"];

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
    /// `v7` (also `v3` to `v8`).
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
    /// Sessions end when the certificate expires; dbward always does this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_expired_cert: Option<Box<serde_json::Value>>,
    /// Per-session MFA: `true` is enforced ([`RoleOptions::requires_session_mfa`]); the
    /// hardware key values are not and refuse access (module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_session_mfa: Option<Box<serde_json::Value>>,
    /// Trusted-device requirement; not enforced: `required` refuses access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_trust_mode: Option<Box<serde_json::Value>>,
    /// Concurrent database sessions per user ([`RoleOptions::max_connections_limit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Box<serde_json::Value>>,
    /// Idle timeout of client sessions ([`RoleOptions::client_idle_limit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout: Option<Box<serde_json::Value>>,
    /// Certificates valid only from the login address ([`RoleOptions::pins_source_ip`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_source_ip: Option<Box<serde_json::Value>>,
}

/// Whom an option that dbward does not enforce takes access from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestrictionScope {
    /// Every database of every holder of the role (limits on the user's connections,
    /// certificates and sessions).
    User,
    /// The databases the role's `allow.db_labels` select (what the role grants).
    Granted,
}

/// A restricting option that dbward does not enforce, as set in one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnenforcedOption {
    /// The option name, e.g. `require_session_mfa`.
    pub field: &'static str,
    /// The value as written, in JSON form.
    pub value: String,
    /// Which decisions it refuses.
    pub scope: RestrictionScope,
}

impl UnenforcedOption {
    /// Options dbward enforces when it can read their value; set in a form it cannot read,
    /// they refuse instead.
    pub const ENFORCED_WHEN_READABLE: [&'static str; 3] =
        ["max_connections", "client_idle_timeout", "pin_source_ip"];

    /// Why dbward refuses instead of enforcing: it does not enforce the option, or cannot
    /// read the value given.
    pub fn why(&self) -> &'static str {
        if Self::ENFORCED_WHEN_READABLE.contains(&self.field) {
            "dbward enforces it but cannot read this value"
        } else {
            "dbward does not enforce it"
        }
    }
}

/// False, zero, empty or off in any of the spellings Teleport accepts.
fn is_off(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            matches!(
                s.as_str(),
                "" | "false" | "no" | "off" | "0" | "0s" | "0m" | "0h" | "never"
            )
        }
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
    }
}

/// A count (`3`, `"3"`); off values are 0.
fn read_count(value: &serde_json::Value) -> Result<u64, ()> {
    if is_off(value) {
        return Ok(0);
    }
    match value {
        serde_json::Value::Number(n) => n.as_u64().ok_or(()),
        serde_json::Value::String(s) => s.trim().parse().map_err(|_| ()),
        _ => Err(()),
    }
}

/// A duration written with a unit (`30m`, `1h30m`, `90s`); off values are zero. A bare
/// number is refused: Teleport reads it as nanoseconds, which nobody means.
fn read_timeout(value: &serde_json::Value) -> Result<Duration, ()> {
    if is_off(value) {
        return Ok(Duration::ZERO);
    }
    match value {
        serde_json::Value::String(s) => crate::duration::parse_duration(s).map_err(|_| ()),
        _ => Err(()),
    }
}

/// On or off in the spellings Teleport accepts.
fn read_switch(value: &serde_json::Value) -> Result<bool, ()> {
    if is_off(value) {
        return Ok(false);
    }
    match value {
        serde_json::Value::Bool(b) => Ok(*b),
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

impl RoleOptions {
    fn is_empty(&self) -> bool {
        self == &RoleOptions::default()
    }

    /// The options set in this role that would restrict access in Teleport and that dbward
    /// does not enforce (or whose value it cannot read). A decision that uses the role must
    /// refuse while any is set.
    pub fn unenforced_restrictions(&self) -> Vec<UnenforcedOption> {
        let mut out = Vec::new();
        let mut check = |field: &'static str,
                         value: &Option<Box<serde_json::Value>>,
                         scope: RestrictionScope,
                         restricts: fn(&serde_json::Value) -> bool| {
            if let Some(value) = value {
                if restricts(value) {
                    out.push(UnenforcedOption {
                        field,
                        value: value.to_string(),
                        scope,
                    });
                }
            }
        };
        // `true` is enforced (a one-time code at `db login`); the hardware key levels are not.
        check(
            "require_session_mfa",
            &self.require_session_mfa,
            RestrictionScope::Granted,
            |v| !is_off(v) && read_switch(v) != Ok(true),
        );
        check(
            "device_trust_mode",
            &self.device_trust_mode,
            RestrictionScope::Granted,
            |v| !is_off(v) && v.as_str().map(str::trim) != Some("optional"),
        );
        // Enforced, but only when dbward can read the value.
        check(
            "max_connections",
            &self.max_connections,
            RestrictionScope::User,
            |v| read_count(v).is_err(),
        );
        check(
            "client_idle_timeout",
            &self.client_idle_timeout,
            RestrictionScope::User,
            |v| read_timeout(v).is_err(),
        );
        check(
            "pin_source_ip",
            &self.pin_source_ip,
            RestrictionScope::User,
            |v| read_switch(v).is_err(),
        );
        out
    }

    /// `max_connections` as a limit: `None` when unset or 0 (no limit) or when the value
    /// cannot be read (then [`RoleOptions::unenforced_restrictions`] reports it and access
    /// is refused).
    pub fn max_connections_limit(&self) -> Option<u64> {
        self.max_connections
            .as_deref()
            .and_then(|v| read_count(v).ok())
            .filter(|n| *n > 0)
    }

    /// `client_idle_timeout` as a duration: `None` when unset, zero or unreadable (see
    /// [`RoleOptions::max_connections_limit`]).
    pub fn client_idle_limit(&self) -> Option<Duration> {
        self.client_idle_timeout
            .as_deref()
            .and_then(|v| read_timeout(v).ok())
            .filter(|d| !d.is_zero())
    }

    /// True when `require_session_mfa` is `true`: a database certificate for the databases
    /// this role grants needs a fresh one-time code. Other restricting values are not
    /// enforced and refuse ([`RoleOptions::unenforced_restrictions`]).
    pub fn requires_session_mfa(&self) -> bool {
        self.require_session_mfa
            .as_deref()
            .is_some_and(|v| read_switch(v) == Ok(true))
    }

    /// True when `pin_source_ip` is on.
    pub fn pins_source_ip(&self) -> bool {
        self.pin_source_ip
            .as_deref()
            .is_some_and(|v| read_switch(v) == Ok(true))
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
                    "unsupported version \"{}\", expected one of v3 to v8",
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
    fn versions_v3_to_v8_are_accepted_and_others_refused() {
        let mut r = Role::new("a");
        for v in ["v3", "v4", "v5", "v6", "v7", "v8"] {
            r.version = v.into();
            r.validate().unwrap();
        }
        for v in ["v2", "v9", "7", ""] {
            r.version = v.into();
            assert!(r.validate().is_err(), "{v}");
        }
    }

    #[test]
    fn restricting_options_are_reported_and_off_values_are_not() {
        let cases: &[(&str, &[&str])] = &[
            ("{}", &[]),
            ("{require_session_mfa: false, device_trust_mode: optional, max_connections: 0, client_idle_timeout: 0s, pin_source_ip: false, disconnect_expired_cert: true}", &[]),
            ("{require_session_mfa: 'off', device_trust_mode: 'off', client_idle_timeout: '0', pin_source_ip: 'no'}", &[]),
            // `true` is enforced; hardware keys are not.
            ("{require_session_mfa: true}", &[]),
            ("{require_session_mfa: 'yes'}", &[]),
            ("{require_session_mfa: hardware_key_touch}", &["require_session_mfa"]),
            ("{require_session_mfa: hardware_key}", &["require_session_mfa"]),
            ("{device_trust_mode: required}", &["device_trust_mode"]),
            ("{device_trust_mode: required-for-humans}", &["device_trust_mode"]),
            // Enforced: reported only when the value cannot be read.
            ("{max_connections: 2, client_idle_timeout: 30m, pin_source_ip: true}", &[]),
            ("{pin_source_ip: 'yes', max_connections: '3', client_idle_timeout: '1h30m'}", &[]),
            ("{max_connections: lots}", &["max_connections"]),
            ("{max_connections: -1}", &["max_connections"]),
            ("{client_idle_timeout: 30}", &["client_idle_timeout"]),
            ("{client_idle_timeout: soon}", &["client_idle_timeout"]),
            ("{pin_source_ip: maybe}", &["pin_source_ip"]),
        ];
        for (options, expected) in cases {
            let r = role(&format!(
                "metadata: {{name: a}}\nspec:\n  options: {options}\n"
            ));
            let fields: Vec<&str> = r
                .spec
                .options
                .unenforced_restrictions()
                .iter()
                .map(|o| o.field)
                .collect();
            assert_eq!(fields, *expected, "{options}");
        }
    }

    #[test]
    fn enforced_limits_are_read_from_the_spellings_teleport_accepts() {
        let options = |yaml: &str| {
            role(&format!(
                "metadata: {{name: a}}\nspec:\n  options: {yaml}\n"
            ))
            .spec
            .options
        };
        let o = options("{max_connections: 2, client_idle_timeout: 1m30s, pin_source_ip: true}");
        assert_eq!(o.max_connections_limit(), Some(2));
        assert_eq!(o.client_idle_limit(), Some(Duration::from_secs(90)));
        assert!(o.pins_source_ip());
        let o = options("{max_connections: '5', client_idle_timeout: '2s', pin_source_ip: 'yes'}");
        assert_eq!(o.max_connections_limit(), Some(5));
        assert_eq!(o.client_idle_limit(), Some(Duration::from_secs(2)));
        assert!(o.pins_source_ip());
        for off in [
            "{}",
            "{max_connections: 0, client_idle_timeout: 0s, pin_source_ip: false}",
            "{max_connections: lots, client_idle_timeout: 30, pin_source_ip: maybe}",
        ] {
            let o = options(off);
            assert_eq!(o.max_connections_limit(), None, "{off}");
            assert_eq!(o.client_idle_limit(), None, "{off}");
            assert!(!o.pins_source_ip(), "{off}");
        }
    }
}
