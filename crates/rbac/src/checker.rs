//! The access decision for one dbward user: which databases they see, as which db user and
//! into which db name they may connect, and whether (and with which db roles or table
//! permissions) dbward provisions their db user. The rules are PROVISIONING.md §1 and §6.
//!
//! Everything user-specific (trait templates, label patterns) is compiled in
//! [`AccessChecker::new`]; checking a database afterwards is comparison only.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use dbward_model::{
    CreateDbUserMode, Db, Protocol, RestrictionScope, Role, RoleConditions, UnenforcedOption, User,
};

use crate::error::{AccessDenied, DenialKind, RbacError};
use crate::permissions::{PermissionEffect, PermissionRule};
use crate::selector::{expand, LabelSelector, Traits};
use crate::template::{Template, ROLE_NAMESPACES};

/// How dbward manages the db user of a session. Ordered by strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProvisioningMode {
    /// The db user exists already; `db_users` decides who may use it.
    Off,
    /// Create or reactivate the user; lock it when the last session ends.
    Keep,
    /// Create or reactivate the user; drop it when the last session ends if the database
    /// allows, else lock it.
    BestEffortDrop,
}

impl ProvisioningMode {
    /// The name as written in role files and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisioningMode::Off => "off",
            ProvisioningMode::Keep => "keep",
            ProvisioningMode::BestEffortDrop => "best_effort_drop",
        }
    }

    fn of_role(role: &Role) -> ProvisioningMode {
        match role.spec.options.effective_db_user_mode() {
            CreateDbUserMode::Keep => ProvisioningMode::Keep,
            CreateDbUserMode::BestEffortDrop => ProvisioningMode::BestEffortDrop,
            CreateDbUserMode::Off | CreateDbUserMode::Unspecified => ProvisioningMode::Off,
        }
    }
}

impl fmt::Display for ProvisioningMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Provisioning for one database: the mode and every db role the user may get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    /// `Keep` or `BestEffortDrop` (never `Off`: that is `None`).
    pub mode: ProvisioningMode,
    /// The allowed db roles, after deny rules.
    pub roles: BTreeSet<String>,
}

/// An allowed connection: what the gateway connects as and what it must set up.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The db user to connect as (the dbward user name when provisioning).
    pub db_user: String,
    /// The database name; for PostgreSQL an empty name has become the db user.
    pub db_name: String,
    /// Provisioning mode; `Off` means connect as an existing user.
    pub mode: ProvisioningMode,
    /// Db roles to grant, sorted and unique; empty when off.
    pub db_roles: Vec<String>,
    /// Table permission rules (PostgreSQL, provisioning on, no db roles); empty otherwise.
    /// Feed them with labelled objects to [`crate::object_permissions`].
    pub db_permissions: Vec<PermissionRule>,
    /// The user's session limits, from all of their roles.
    pub limits: SessionLimits,
    /// Some role granting this database sets `require_session_mfa: true`: only a database
    /// certificate issued after a fresh one-time code may open the session.
    pub session_mfa: bool,
}

/// Limits on a user's sessions from the role options Teleport defines for them; the smallest
/// non-zero value of the user's roles wins, and any role pinning the source IP pins it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// `max_connections`: concurrent database sessions of the user, across gateways.
    pub max_connections: Option<u64>,
    /// `client_idle_timeout`: a session whose client sends nothing this long is closed.
    pub client_idle_timeout: Option<Duration>,
    /// `pin_source_ip`: certificates are valid only from the address recorded in them.
    pub pin_source_ip: bool,
}

impl SessionLimits {
    /// The limits of a set of roles.
    pub fn of_roles(roles: &[Role]) -> SessionLimits {
        SessionLimits {
            max_connections: roles
                .iter()
                .filter_map(|r| r.spec.options.max_connections_limit())
                .min(),
            client_idle_timeout: roles
                .iter()
                .filter_map(|r| r.spec.options.client_idle_limit())
                .min(),
            pin_source_ip: roles.iter().any(|r| r.spec.options.pins_source_ip()),
        }
    }
}

/// One side (allow or deny) of a role with templates expanded and patterns compiled.
#[derive(Debug, Clone)]
struct Conditions {
    labels: LabelSelector,
    db_names: Vec<String>,
    db_users: Vec<String>,
    db_roles: Vec<String>,
    db_permissions: Vec<PermissionRule>,
}

#[derive(Debug, Clone)]
struct CompiledRole {
    name: String,
    mode: ProvisioningMode,
    allow: Conditions,
    deny: Conditions,
    /// The deny block names no users, names, roles or permissions: when it applies, the
    /// whole database is denied. Decided on the role as written, so a template that
    /// expands to nothing narrows the deny instead of widening it to the whole database.
    deny_is_total: bool,
    /// Options that restrict access in Teleport and that dbward does not enforce (or cannot
    /// read): while one applies, every connection this role takes part in is refused.
    unenforced: Vec<UnenforcedOption>,
    /// `require_session_mfa: true`: the databases this role grants need an MFA-verified
    /// database certificate.
    session_mfa: bool,
}

/// Access decisions for one dbward user holding a set of roles.
#[derive(Debug, Clone)]
pub struct AccessChecker {
    user: String,
    roles: Vec<CompiledRole>,
    ttl_cap: Option<Duration>,
    limits: SessionLimits,
}

impl AccessChecker {
    /// Compiles `roles` (the roles `user` holds) for `user`'s traits.
    pub fn new(user: &User, roles: &[Role]) -> Result<AccessChecker, RbacError> {
        let traits = &user.spec.traits;
        let compiled = roles
            .iter()
            .map(|role| compile_role(role, traits))
            .collect::<Result<Vec<_>, _>>()?;
        let ttl_cap = roles
            .iter()
            .filter_map(|r| r.spec.options.max_session_ttl)
            .min();
        Ok(AccessChecker {
            user: user.metadata.name.clone(),
            roles: compiled,
            ttl_cap,
            limits: SessionLimits::of_roles(roles),
        })
    }

    /// The dbward user name these decisions are for.
    pub fn user_name(&self) -> &str {
        &self.user
    }

    /// The limits the user's roles put on their sessions and certificates.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// True when the user may see `db` in `db ls`: some role's allow labels select it and no
    /// applying deny names the whole database.
    pub fn can_see_db(&self, db: &Db) -> bool {
        self.reach(db).is_ok()
    }

    /// The provisioning mode and allowed db roles for `db`; `None` when provisioning is off.
    /// Fails when the database is not reachable at all.
    pub fn provisioning(&self, db: &Db) -> Result<Option<Provisioning>, AccessDenied> {
        self.reach(db)?;
        let mode = self.mode(db);
        if mode == ProvisioningMode::Off {
            return Ok(None);
        }
        Ok(Some(Provisioning {
            mode,
            roles: self.allowed_db_roles(db),
        }))
    }

    /// The database names (PostgreSQL) this user may enter on `db`, as far as they are
    /// knowable: the literal `db_names` of the roles that select it, less those denied. A
    /// `"*"` allows names that cannot be listed and adds none. Empty when `db` is out of
    /// reach.
    pub fn literal_db_names(&self, db: &Db) -> BTreeSet<String> {
        if self.reach(db).is_err() {
            return BTreeSet::new();
        }
        let mut names = BTreeSet::new();
        for role in self
            .roles
            .iter()
            .filter(|r| r.allow.labels.matches(&db.metadata.labels))
        {
            names.extend(role.allow.db_names.iter().filter(|n| *n != "*").cloned());
        }
        for role in self.applying_denies(db) {
            names.retain(|n| !names_match(&role.deny.db_names, n));
        }
        names
    }

    /// The "Allowed Users" column of `db ls`.
    pub fn allowed_users_display(&self, db: &Db) -> String {
        if self.reach(db).is_err() {
            return "(none)".to_string();
        }
        if self.mode(db) != ProvisioningMode::Off {
            return format!("[{}] (Auto-provisioned)", self.user);
        }
        let mut allowed = BTreeSet::new();
        for role in self
            .roles
            .iter()
            .filter(|r| r.allow.labels.matches(&db.metadata.labels))
        {
            allowed.extend(role.allow.db_users.iter().cloned());
        }
        let mut denied = BTreeSet::new();
        for role in self.applying_denies(db) {
            denied.extend(role.deny.db_users.iter().cloned());
        }
        if denied.contains("*") {
            return "(none)".to_string();
        }
        let wildcard = allowed.remove("*");
        let mut shown: Vec<String> = Vec::new();
        if wildcard {
            shown.push("*".to_string());
        }
        shown.extend(allowed.into_iter().filter(|u| !denied.contains(u)));
        if shown.is_empty() {
            return "(none)".to_string();
        }
        let list = format!("[{}]", shown.join(", "));
        if wildcard && !denied.is_empty() {
            let denied: Vec<String> = denied.into_iter().collect();
            format!("{list}, except: [{}]", denied.join(", "))
        } else {
            list
        }
    }

    /// `ttl` shortened to the smallest `max_session_ttl` of the user's roles.
    pub fn cap_ttl(&self, ttl: Duration) -> Duration {
        match self.ttl_cap {
            Some(cap) => ttl.min(cap),
            None => ttl,
        }
    }

    /// Decides a connection to `db` as `db_user` into `db_name` (empty: PostgreSQL's default,
    /// the db user), with `requested_roles` from `--db-roles` (empty: every allowed role).
    pub fn authorize(
        &self,
        db: &Db,
        db_user: &str,
        db_name: &str,
        requested_roles: &[String],
    ) -> Result<Decision, AccessDenied> {
        let postgres = db.spec.protocol == Protocol::Postgres;
        let db_name = if db_name.is_empty() && postgres {
            db_user
        } else {
            db_name
        };
        let requested: BTreeSet<String> = requested_roles
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        let target = || {
            format!(
                "user \"{}\" to database \"{}\" as db user \"{db_user}\" into \"{db_name}\"",
                self.user,
                db.name()
            )
        };

        self.reach(db)?;
        if let Some((role, option)) = self.unenforced_restriction(db) {
            return Err(AccessDenied::generic(format!(
                "{}: role \"{}\" sets option \"{}: {}\", which restricts access: {}",
                target(),
                role,
                option.field,
                option.value,
                option.why()
            )));
        }
        for role in self.applying_denies(db) {
            if names_match(&role.deny.db_users, db_user) {
                return Err(AccessDenied::generic(format!(
                    "{}: role \"{}\" denies db user \"{db_user}\"",
                    target(),
                    role.name
                )));
            }
            if postgres && names_match(&role.deny.db_names, db_name) {
                return Err(AccessDenied::generic(format!(
                    "{}: role \"{}\" denies db name \"{db_name}\"",
                    target(),
                    role.name
                )));
            }
        }

        let mode = self.mode(db);
        if mode == ProvisioningMode::Off {
            let allowed_by = self.roles.iter().find(|r| {
                r.allow.labels.matches(&db.metadata.labels)
                    && names_match(&r.allow.db_users, db_user)
                    && (!postgres || names_match(&r.allow.db_names, db_name))
            });
            if allowed_by.is_none() {
                return Err(AccessDenied::generic(format!(
                    "{}: no role allows this db user and db name together",
                    target()
                )));
            }
            if let Some(role) = requested.iter().next() {
                return Err(AccessDenied::new(
                    DenialKind::DbRoleNotAllowed { role: role.clone() },
                    format!(
                        "{}: db roles requested but automatic user provisioning is off",
                        target()
                    ),
                ));
            }
            return Ok(Decision {
                db_user: db_user.to_string(),
                db_name: db_name.to_string(),
                mode,
                db_roles: Vec::new(),
                db_permissions: Vec::new(),
                limits: self.limits,
                session_mfa: self.requires_session_mfa(db),
            });
        }

        if db_user != self.user {
            return Err(AccessDenied::new(
                DenialKind::WrongDbUser {
                    expected: self.user.clone(),
                    requested: db_user.to_string(),
                },
                format!(
                    "{}: provisioning mode {mode} requires the dbward user name",
                    target()
                ),
            ));
        }
        let name_allowed = self.roles.iter().any(|r| {
            r.allow.labels.matches(&db.metadata.labels)
                && (!postgres || names_match(&r.allow.db_names, db_name))
        });
        if !name_allowed {
            return Err(AccessDenied::generic(format!(
                "{}: no role allows this db name",
                target()
            )));
        }
        if db.admin_user().is_none() {
            return Err(AccessDenied::new(
                DenialKind::NoAdminUser {
                    db: db.name().to_string(),
                },
                format!(
                    "{}: provisioning mode {mode} but the db resource has no admin user",
                    target()
                ),
            ));
        }
        let allowed_roles = self.allowed_db_roles(db);
        if let Some(role) = requested.iter().find(|r| !allowed_roles.contains(*r)) {
            return Err(AccessDenied::new(
                DenialKind::DbRoleNotAllowed { role: role.clone() },
                format!(
                    "{}: db role \"{role}\" is not among the allowed {:?}",
                    target(),
                    allowed_roles
                ),
            ));
        }
        let db_roles: Vec<String> = if requested.is_empty() {
            allowed_roles.into_iter().collect()
        } else {
            requested.into_iter().collect()
        };
        let db_permissions = self.permission_rules(db);
        if !postgres && !db_permissions.is_empty() {
            return Err(AccessDenied::new(
                DenialKind::PermissionsUnsupported {
                    db: db.metadata.name.clone(),
                },
                format!(
                    "{}: db_permissions apply to a non-PostgreSQL database",
                    target()
                ),
            ));
        }
        if !db_roles.is_empty() && !db_permissions.is_empty() {
            return Err(AccessDenied::new(
                DenialKind::RolesAndPermissions,
                format!(
                    "{}: db roles {db_roles:?} and db_permissions both apply",
                    target()
                ),
            ));
        }
        Ok(Decision {
            db_user: db_user.to_string(),
            db_name: db_name.to_string(),
            mode,
            db_roles,
            db_permissions,
            limits: self.limits,
            session_mfa: self.requires_session_mfa(db),
        })
    }

    /// True when some role of the user whose allow labels select `db` sets
    /// `require_session_mfa: true`: the scope Teleport gives the option.
    pub fn requires_session_mfa(&self, db: &Db) -> bool {
        self.roles
            .iter()
            .any(|role| role.session_mfa && role.allow.labels.matches(&db.metadata.labels))
    }

    /// The table permission rules that apply to `db`: allow entries of every role whose
    /// allow labels select it, deny entries of every role whose deny applies. Empty when no
    /// allow entry applies (nothing could be granted, so the session uses db roles).
    pub fn permission_rules(&self, db: &Db) -> Vec<PermissionRule> {
        let labels = &db.metadata.labels;
        let mut rules: Vec<PermissionRule> = self
            .roles
            .iter()
            .filter(|r| r.allow.labels.matches(labels))
            .flat_map(|r| r.allow.db_permissions.iter().cloned())
            .collect();
        if rules.is_empty() {
            return rules;
        }
        rules.extend(
            self.applying_denies(db)
                .flat_map(|r| r.deny.db_permissions.iter().cloned()),
        );
        rules
    }

    /// The first option that dbward does not enforce and that takes part in a decision about
    /// `db`: user-wide options of any role, grant options of roles whose allow labels select
    /// `db`.
    fn unenforced_restriction<'a>(&'a self, db: &Db) -> Option<(&'a str, &'a UnenforcedOption)> {
        self.roles.iter().find_map(|role| {
            role.unenforced
                .iter()
                .find(|o| match o.scope {
                    RestrictionScope::User => true,
                    RestrictionScope::Granted => role.allow.labels.matches(&db.metadata.labels),
                })
                .map(|o| (role.name.as_str(), o))
        })
    }

    /// Fails when no role's allow labels select `db` or an applying deny names all of it.
    fn reach(&self, db: &Db) -> Result<(), AccessDenied> {
        let labels = &db.metadata.labels;
        if let Some(role) = self.applying_denies(db).find(|r| r.deny_is_total) {
            return Err(AccessDenied::generic(format!(
                "user \"{}\": role \"{}\" denies database \"{}\"",
                self.user,
                role.name,
                db.name()
            )));
        }
        if !self.roles.iter().any(|r| r.allow.labels.matches(labels)) {
            return Err(AccessDenied::generic(format!(
                "user \"{}\": no role's allow.db_labels select database \"{}\" (labels {:?})",
                self.user,
                db.name(),
                labels
            )));
        }
        Ok(())
    }

    /// Roles whose deny block applies to `db`.
    fn applying_denies<'a>(&'a self, db: &'a Db) -> impl Iterator<Item = &'a CompiledRole> + 'a {
        self.roles
            .iter()
            .filter(|r| r.deny.labels.matches(&db.metadata.labels))
    }

    /// Roles that ask for provisioning and whose allow labels select `db`.
    fn provisioning_roles<'a>(&'a self, db: &'a Db) -> impl Iterator<Item = &'a CompiledRole> + 'a {
        self.roles.iter().filter(|r| {
            r.mode != ProvisioningMode::Off && r.allow.labels.matches(&db.metadata.labels)
        })
    }

    /// The strongest mode among the provisioning roles; roles with `off` take no part.
    fn mode(&self, db: &Db) -> ProvisioningMode {
        self.provisioning_roles(db)
            .map(|r| r.mode)
            .max()
            .unwrap_or(ProvisioningMode::Off)
    }

    /// Union of the provisioning roles' `allow.db_roles` minus every applying deny's
    /// `db_roles` (`*` removes all).
    fn allowed_db_roles(&self, db: &Db) -> BTreeSet<String> {
        let mut roles: BTreeSet<String> = self
            .provisioning_roles(db)
            .flat_map(|r| r.allow.db_roles.iter().cloned())
            .collect();
        for deny in self.applying_denies(db) {
            if deny.deny.db_roles.iter().any(|r| r == "*") {
                roles.clear();
            } else {
                for r in &deny.deny.db_roles {
                    roles.remove(r);
                }
            }
        }
        roles
    }
}

/// True when `list` holds `value` or `*`.
fn names_match(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

fn compile_role(role: &Role, traits: &Traits) -> Result<CompiledRole, RbacError> {
    let name = &role.metadata.name;
    let err = |field: String, message: String| RbacError::InvalidRole {
        role: name.clone(),
        field,
        message,
    };
    if role.spec.allow.db_roles.iter().any(|r| r.trim() == "*") {
        return Err(err(
            "allow.db_roles".into(),
            "\"*\" is not allowed; list the database roles to grant".into(),
        ));
    }
    let mut allow = compile_conditions(&role.spec.allow, PermissionEffect::Allow, name, traits)
        .map_err(|(field, message)| err(format!("allow.{field}"), message))?;
    let deny = compile_conditions(&role.spec.deny, PermissionEffect::Deny, name, traits)
        .map_err(|(field, message)| err(format!("deny.{field}"), message))?;
    // A `*` that came from a trait value cannot name a db role to grant.
    allow.db_roles.retain(|r| r != "*");
    let d = &role.spec.deny;
    let deny_is_total = d.db_users.is_empty()
        && d.db_names.is_empty()
        && d.db_roles.is_empty()
        && d.db_permissions.is_empty();
    Ok(CompiledRole {
        name: name.clone(),
        mode: ProvisioningMode::of_role(role),
        allow,
        deny,
        deny_is_total,
        unenforced: role.spec.options.unenforced_restrictions(),
        session_mfa: role.spec.options.requires_session_mfa(),
    })
}

fn compile_conditions(
    conditions: &RoleConditions,
    effect: PermissionEffect,
    role: &str,
    traits: &Traits,
) -> Result<Conditions, (String, String)> {
    let labels = LabelSelector::compile(&conditions.db_labels, traits)
        .map_err(|m| ("db_labels".to_string(), m))?;
    let list = |field: &str, values: &[String]| -> Result<Vec<String>, (String, String)> {
        let mut out = Vec::new();
        for value in values {
            for v in expand(value, traits).map_err(|m| (field.to_string(), m))? {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        Ok(out)
    };
    let mut db_permissions = Vec::new();
    for (i, entry) in conditions.db_permissions.iter().enumerate() {
        db_permissions.push(
            PermissionRule::compile(effect, role, entry, traits)
                .map_err(|m| (format!("db_permissions[{i}]"), m))?,
        );
    }
    Ok(Conditions {
        labels,
        db_names: list("db_names", &conditions.db_names)?,
        db_users: list("db_users", &conditions.db_users)?,
        db_roles: list("db_roles", &conditions.db_roles)?,
        db_permissions,
    })
}

/// Checks a role's syntax without any user: templates parse, patterns compile, `*` is not
/// in `allow.db_roles` nor in `allow.db_permissions`, permission names are known. Errors
/// name the role. Use it when a role is created, so mistakes show before anyone connects.
pub fn validate_role(role: &Role) -> Result<(), RbacError> {
    let name = &role.metadata.name;
    let err = |field: String, message: String| RbacError::InvalidRole {
        role: name.clone(),
        field,
        message,
    };
    if role.spec.allow.db_roles.iter().any(|r| r.trim() == "*") {
        return Err(err(
            "allow.db_roles".into(),
            "\"*\" is not allowed; list the database roles to grant".into(),
        ));
    }
    for (side, conditions, effect) in [
        ("allow", &role.spec.allow, PermissionEffect::Allow),
        ("deny", &role.spec.deny, PermissionEffect::Deny),
    ] {
        LabelSelector::check_syntax(&conditions.db_labels)
            .map_err(|m| err(format!("{side}.db_labels"), m))?;
        for (field, values) in [
            ("db_names", &conditions.db_names),
            ("db_users", &conditions.db_users),
            ("db_roles", &conditions.db_roles),
        ] {
            for value in values {
                Template::parse(value, ROLE_NAMESPACES)
                    .map_err(|m| err(format!("{side}.{field}"), m))?;
            }
        }
        for (i, entry) in conditions.db_permissions.iter().enumerate() {
            let field = format!("{side}.db_permissions[{i}]");
            LabelSelector::check_syntax(&entry.match_labels).map_err(|m| err(field.clone(), m))?;
            PermissionRule::compile(effect, name, entry, &Traits::new())
                .map_err(|m| err(field, m))?;
        }
    }
    Ok(())
}

/// Reads a resource file as [`dbward_model::parse_resources`] does and also compiles what the
/// access decision will use: every role's templates, selectors and permissions
/// ([`validate_role`]) and every import rule. A broken template is refused here, at
/// `dbward create`, with the file and line, instead of breaking every holder's connections
/// later.
pub fn parse_resources(
    text: &str,
    file_name: &str,
) -> Result<dbward_model::ParsedResources, dbward_model::ModelError> {
    dbward_model::parse_resources_with(text, file_name, &|resource| match resource {
        dbward_model::Resource::Role(role) => validate_role(role).map_err(|e| e.to_string()),
        dbward_model::Resource::DbObjectImportRule(rule) => {
            crate::ImportRules::new(std::slice::from_ref(rule))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        dbward_model::Resource::TrustedCluster(trust) => {
            crate::check_role_map(&trust.spec.role_map)
        }
        _ => Ok(()),
    })
}
