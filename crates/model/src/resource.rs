//! Resource documents (`kind` / `version` / `metadata` / `spec`) and the file parser behind
//! `dbward create -f`.
//!
//! Files written for Teleport (role v7, user v2, db v3, db_object_import_rule v1) load
//! unchanged: fields that Teleport knows but dbward does not use are reported as warnings,
//! while misspelled fields are errors, both with `file:line`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::source::{self, Document, FieldPath};
use crate::{Db, DbObjectImportRule, ModelError, OidcConnector, Role, TrustedCluster, User};

/// Any resource dbward stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// `kind: role`
    Role(Role),
    /// `kind: user`
    User(User),
    /// `kind: db`
    Db(Db),
    /// `kind: db_object_import_rule`
    DbObjectImportRule(DbObjectImportRule),
    /// `kind: oidc`
    Oidc(OidcConnector),
    /// `kind: trusted_cluster`
    TrustedCluster(TrustedCluster),
}

/// Every kind, as written in files.
pub const KINDS: [&str; 6] = [
    Role::KIND,
    User::KIND,
    Db::KIND,
    DbObjectImportRule::KIND,
    OidcConnector::KIND,
    TrustedCluster::KIND,
];

impl Resource {
    /// `role`, `user`, `db` or `db_object_import_rule`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Role(_) => Role::KIND,
            Resource::User(_) => User::KIND,
            Resource::Db(_) => Db::KIND,
            Resource::DbObjectImportRule(_) => DbObjectImportRule::KIND,
            Resource::Oidc(_) => OidcConnector::KIND,
            Resource::TrustedCluster(_) => TrustedCluster::KIND,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The resource's metadata.
    pub fn metadata(&self) -> &crate::Metadata {
        match self {
            Resource::Role(r) => &r.metadata,
            Resource::User(u) => &u.metadata,
            Resource::Db(d) => &d.metadata,
            Resource::DbObjectImportRule(r) => &r.metadata,
            Resource::Oidc(c) => &c.metadata,
            Resource::TrustedCluster(t) => &t.metadata,
        }
    }

    /// The version as written.
    pub fn version(&self) -> &str {
        match self {
            Resource::Role(r) => &r.version,
            Resource::User(u) => &u.version,
            Resource::Db(d) => &d.version,
            Resource::DbObjectImportRule(r) => &r.version,
            Resource::Oidc(c) => &c.version,
            Resource::TrustedCluster(t) => &t.version,
        }
    }

    /// Checks the rules of the resource's kind.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Resource::Role(r) => r.validate(),
            Resource::User(u) => u.validate(),
            Resource::Db(d) => d.validate(),
            Resource::DbObjectImportRule(r) => r.validate(),
            Resource::Oidc(c) => c.validate(),
            Resource::TrustedCluster(t) => t.validate(),
        }
    }

    /// The full document as YAML (what `dbward get --format yaml` prints).
    pub fn to_yaml(&self) -> String {
        // Serialising these plain types cannot fail; keep the output a valid YAML comment if
        // it ever does.
        serde_yaml_ng::to_string(self).unwrap_or_else(|err| format!("# {err}\n"))
    }

    /// The full document as a JSON value.
    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl From<Role> for Resource {
    fn from(r: Role) -> Self {
        Resource::Role(r)
    }
}
impl From<User> for Resource {
    fn from(u: User) -> Self {
        Resource::User(u)
    }
}
impl From<Db> for Resource {
    fn from(d: Db) -> Self {
        Resource::Db(d)
    }
}
impl From<TrustedCluster> for Resource {
    fn from(t: TrustedCluster) -> Self {
        Resource::TrustedCluster(t)
    }
}
impl From<DbObjectImportRule> for Resource {
    fn from(r: DbObjectImportRule) -> Self {
        Resource::DbObjectImportRule(r)
    }
}
impl From<OidcConnector> for Resource {
    fn from(c: OidcConnector) -> Self {
        Resource::Oidc(c)
    }
}

/// The document: `kind` first, then the resource's own fields.
#[derive(Serialize)]
struct Tagged<'a, T> {
    kind: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        match self {
            Resource::Role(r) => Tagged { kind, inner: r }.serialize(serializer),
            Resource::User(u) => Tagged { kind, inner: u }.serialize(serializer),
            Resource::Db(d) => Tagged { kind, inner: d }.serialize(serializer),
            Resource::DbObjectImportRule(r) => Tagged { kind, inner: r }.serialize(serializer),
            Resource::Oidc(c) => Tagged { kind, inner: c }.serialize(serializer),
            Resource::TrustedCluster(t) => Tagged { kind, inner: t }.serialize(serializer),
        }
    }
}

/// Reads a full document from any self-describing format (the store keeps JSON). Unknown
/// fields are ignored here; files go through [`parse_resources`], which reports them.
impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        let kind = value
            .as_object_mut()
            .ok_or_else(|| D::Error::custom("a resource must be a mapping"))?
            .remove("kind")
            .ok_or_else(|| D::Error::missing_field("kind"))?;
        let kind = kind
            .as_str()
            .ok_or_else(|| D::Error::custom("kind must be a string"))?;
        let resource = match kind {
            Role::KIND => serde_json::from_value(value).map(Resource::Role),
            User::KIND => serde_json::from_value(value).map(Resource::User),
            Db::KIND => serde_json::from_value(value).map(Resource::Db),
            DbObjectImportRule::KIND => {
                serde_json::from_value(value).map(Resource::DbObjectImportRule)
            }
            OidcConnector::KIND => serde_json::from_value(value).map(Resource::Oidc),
            TrustedCluster::KIND => serde_json::from_value(value).map(Resource::TrustedCluster),
            other => return Err(D::Error::custom(unknown_kind(other))),
        };
        resource.map_err(D::Error::custom)
    }
}

fn unknown_kind(kind: &str) -> String {
    format!(
        "unknown kind \"{kind}\", expected role, user, db, db_object_import_rule, oidc or trusted_cluster"
    )
}

/// What [`parse_resources`] read from a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedResources {
    /// The resources, in file order, validated.
    pub resources: Vec<Resource>,
    /// `file:line: field "x" is not supported by dbward and is ignored` lines.
    pub warnings: Vec<String>,
    /// The file name as given, and for each resource the line its errors are reported at.
    pub file: String,
    /// Line of each resource of `resources` (same order).
    pub lines: Vec<usize>,
}

impl ParsedResources {
    /// Refuses a user whose `spec.roles` names a role that neither `exists` (already stored)
    /// nor is defined in the same file, as `users add` does.
    pub fn check_user_roles(&self, exists: &dyn Fn(&str) -> bool) -> Result<(), ModelError> {
        let in_file = |name: &str| {
            self.resources
                .iter()
                .any(|r| matches!(r, Resource::Role(role) if role.metadata.name == name))
        };
        for (resource, line) in self.resources.iter().zip(&self.lines) {
            let Resource::User(user) = resource else {
                continue;
            };
            if let Some(missing) = user
                .spec
                .roles
                .iter()
                .find(|r| !in_file(r.as_str()) && !exists(r.as_str()))
            {
                return Err(ModelError::Parse {
                    file: self.file.clone(),
                    line: *line,
                    message: format!(
                        "user \"{}\": role \"{missing}\" does not exist; create it first",
                        user.metadata.name
                    ),
                });
            }
        }
        Ok(())
    }
}

/// An extra check run on every resource after its own validation (the rbac crate compiles
/// templates, selectors and permissions this way); its message is reported at the
/// resource's `file:line`.
pub type ResourceCheck<'a> = &'a dyn Fn(&Resource) -> Result<(), String>;

/// Reads every resource of a file: multi-document YAML (`---`), a YAML list of resources, one
/// JSON object or a JSON array. Each resource is normalised and validated. Resources of kinds
/// dbward does not know (other parts of a `tctl get all` export) are skipped with one warning
/// each.
///
/// Errors name the file and line: `roles.yaml:7: unknown field "db_lables"`.
pub fn parse_resources(text: &str, file_name: &str) -> Result<ParsedResources, ModelError> {
    parse_resources_with(text, file_name, &|_| Ok(()))
}

/// [`parse_resources`] with an extra check per resource.
pub fn parse_resources_with(
    text: &str,
    file_name: &str,
    check: ResourceCheck<'_>,
) -> Result<ParsedResources, ModelError> {
    let mut out = ParsedResources {
        file: file_name.to_string(),
        ..ParsedResources::default()
    };
    for doc in source::split_documents(text) {
        if doc.is_empty() {
            continue;
        }
        let yaml = source::yaml_text(&doc);
        let doc = Document {
            text: &yaml,
            first_line: doc.first_line,
        };
        let shape: serde_yaml_ng::Value = serde_yaml_ng::from_str(doc.text)
            .map_err(|err| source::yaml_error(file_name, &doc, &err))?;
        match shape {
            serde_yaml_ng::Value::Null => continue,
            serde_yaml_ng::Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    parse_one(&doc, Some(i), item, file_name, check, &mut out)?;
                }
            }
            item => parse_one(&doc, None, &item, file_name, check, &mut out)?,
        }
    }
    Ok(out)
}

/// Reads one resource: the whole document, or element `index` of a top-level list.
fn parse_one(
    doc: &Document<'_>,
    index: Option<usize>,
    shape: &serde_yaml_ng::Value,
    file: &str,
    check: ResourceCheck<'_>,
    out: &mut ParsedResources,
) -> Result<(), ModelError> {
    let prefix: Vec<source::Seg> = index.map(source::Seg::Index).into_iter().collect();
    let line_of = |keys: &[&str]| -> usize {
        let mut path = FieldPath(prefix.clone());
        path.0
            .extend(keys.iter().map(|k| source::Seg::Key(k.to_string())));
        source::locate(doc.text, &path)
            .or_else(|| index.and_then(|_| first_key_line(doc, &prefix)))
            .map(|l| doc.file_line(l))
            .unwrap_or(doc.first_line)
    };
    let parse_error = |line: usize, message: String| ModelError::Parse {
        file: file.to_string(),
        line,
        message,
    };
    let serde_yaml_ng::Value::Mapping(map) = shape else {
        return Err(parse_error(
            line_of(&[]),
            "a resource must be a mapping with kind, version, metadata and spec".to_string(),
        ));
    };
    let kind = match map.get("kind") {
        Some(serde_yaml_ng::Value::String(kind)) => kind.as_str(),
        Some(_) => {
            return Err(parse_error(
                line_of(&["kind"]),
                "kind must be a string".into(),
            ))
        }
        None => return Err(parse_error(line_of(&[]), "missing field \"kind\"".into())),
    };
    let (mut resource, ignored) = match kind {
        Role::KIND => decode::<Role>(doc, index, file).map(|(r, i)| (Resource::Role(r), i))?,
        User::KIND => decode::<User>(doc, index, file).map(|(u, i)| (Resource::User(u), i))?,
        Db::KIND => decode::<Db>(doc, index, file).map(|(d, i)| (Resource::Db(d), i))?,
        DbObjectImportRule::KIND => decode::<DbObjectImportRule>(doc, index, file)
            .map(|(r, i)| (Resource::DbObjectImportRule(r), i))?,
        OidcConnector::KIND => {
            decode::<OidcConnector>(doc, index, file).map(|(c, i)| (Resource::Oidc(c), i))?
        }
        TrustedCluster::KIND => decode::<TrustedCluster>(doc, index, file)
            .map(|(t, i)| (Resource::TrustedCluster(t), i))?,
        other => {
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(serde_yaml_ng::Value::as_str)
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default();
            out.warnings.push(format!(
                "{file}:{}: kind \"{other}\" is not supported by dbward; resource{name} skipped",
                line_of(&["kind"])
            ));
            return Ok(());
        }
    };
    for path in ignored {
        let mut relative = path.clone();
        if index.is_some() && !relative.0.is_empty() {
            relative.0.remove(0);
        }
        let line = source::locate(doc.text, &path)
            .map(|l| doc.file_line(l))
            .unwrap_or_else(|| line_of(&[]));
        match classify(kind, &relative.keys()) {
            Field::Tag => {}
            Field::Unsupported => out.warnings.push(format!(
                "{file}:{line}: field \"{relative}\" is not supported by dbward and is ignored"
            )),
            Field::Refused(reason) => {
                return Err(parse_error(
                    line,
                    format!("field \"{relative}\" is not supported by dbward: {reason}"),
                ))
            }
            Field::Unknown => {
                return Err(ModelError::UnknownField {
                    file: file.to_string(),
                    line,
                    field: relative.last_key().to_string(),
                })
            }
        }
    }
    // Fields Teleport enforces by their value and dbward does not keep: a user or role they
    // would restrict is refused rather than loaded with more access than its source gave. (A
    // db's expiry only warns: a db resource grants nothing by itself.)
    let grants_access = kind == User::KIND || kind == Role::KIND;
    for (keys, value) in [
        (
            &["metadata", "expires"][..],
            map.get("metadata").and_then(|m| m.get("expires")),
        ),
        (
            &["spec", "expires"][..],
            map.get("spec").and_then(|s| s.get("expires")),
        ),
    ] {
        if grants_access && value.is_some_and(|v| !is_unset_time(v)) {
            return Err(parse_error(
                line_of(keys),
                format!(
                    "field \"{}\" sets an expiry, which dbward does not enforce; remove it to load the resource without one",
                    keys.join(".")
                ),
            ));
        }
    }
    if kind == User::KIND {
        let locked = map
            .get("spec")
            .and_then(|s| s.get("status"))
            .and_then(|s| s.get("is_locked"))
            .and_then(serde_yaml_ng::Value::as_bool)
            .unwrap_or(false);
        if locked {
            return Err(parse_error(
                line_of(&["spec", "status", "is_locked"]),
                "the user is locked (spec.status.is_locked), which dbward does not enforce; unlock it or remove the field to load it".into(),
            ));
        }
    }
    if let Resource::Role(role) = &mut resource {
        // Teleport role v3: a missing (or null) `allow.db_labels` selects every database.
        let db_labels_written = map
            .get("spec")
            .and_then(|s| s.get("allow"))
            .and_then(|a| a.get("db_labels"))
            .is_some_and(|l| !l.is_null());
        if role.version == "v3" && !db_labels_written {
            role.spec.allow.db_labels = crate::Labels::wildcard();
        }
        role.normalize();
        for option in role.spec.options.unenforced_restrictions() {
            let line = line_of(&["spec", "options", option.field]);
            let whom = match option.scope {
                crate::RestrictionScope::User => "every database",
                crate::RestrictionScope::Granted => "the databases it grants",
            };
            out.warnings.push(format!(
                "{file}:{line}: role \"{}\": option \"{}: {}\" restricts access and {}: access through this role to {whom} is refused",
                role.metadata.name,
                option.field,
                option.value,
                option.why()
            ));
        }
    }
    let line = line_of(&["metadata"]);
    resource
        .validate()
        .map_err(|err| parse_error(line, err.to_string()))?;
    check(&resource).map_err(|message| parse_error(line, message))?;
    if out
        .resources
        .iter()
        .any(|r| r.kind() == resource.kind() && r.name() == resource.name())
    {
        return Err(parse_error(
            line,
            format!(
                "{} \"{}\" appears more than once in this file",
                resource.kind(),
                resource.name()
            ),
        ));
    }
    out.resources.push(resource);
    out.lines.push(line);
    Ok(())
}

/// The line of the first key of a list element, for errors about the element as a whole.
fn first_key_line(doc: &Document<'_>, prefix: &[source::Seg]) -> Option<usize> {
    ["kind", "version", "metadata", "spec"]
        .iter()
        .find_map(|k| {
            let mut path = FieldPath(prefix.to_vec());
            path.0.push(source::Seg::Key(k.to_string()));
            source::locate(doc.text, &path)
        })
}

fn decode<T: serde::de::DeserializeOwned>(
    doc: &Document<'_>,
    index: Option<usize>,
    file: &str,
) -> Result<(T, Vec<FieldPath>), ModelError> {
    source::decode::<T>(doc.text, index).map_err(|err| source::yaml_error(file, doc, &err))
}

/// What an unused field is.
enum Field {
    /// `kind`, consumed by the dispatch above.
    Tag,
    /// A Teleport field dbward does not use: warn and go on.
    Unsupported,
    /// A Teleport field whose absence would change who gets access: refuse the file.
    Refused(&'static str),
    /// Not a field of this kind at all (usually a typo).
    Unknown,
}

/// Role options that Teleport role v3–v8 defines, that cannot take access away in dbward
/// (see the table in [`crate::role`]), and that dbward does not use.
const TELEPORT_ROLE_OPTIONS: &[&str] = &[
    "forward_agent",
    "port_forwarding",
    "ssh_port_forwarding",
    "cert_format",
    "bpf",
    "enhanced_recording",
    "permit_x11_forwarding",
    "max_sessions",
    "max_kubernetes_connections",
    "request_access",
    "request_prompt",
    "mfa_verification_interval",
    "lock",
    "record_session",
    "desktop_clipboard",
    "desktop_directory_sharing",
    "ssh_file_copy",
    "create_host_user",
    "create_host_user_mode",
    "create_host_user_default_shell",
    "create_desktop_user",
    "cert_extensions",
    "idp",
];

/// Allow/deny conditions that Teleport role v3–v8 defines for other resource types.
const TELEPORT_ROLE_CONDITIONS: &[&str] = &[
    "require_session_join",
    "mcp",
    "logins",
    "node_labels",
    "node_labels_expression",
    "cluster_labels",
    "cluster_labels_expression",
    "kubernetes_groups",
    "kubernetes_users",
    "kubernetes_labels",
    "kubernetes_labels_expression",
    "kubernetes_resources",
    "app_labels",
    "app_labels_expression",
    "db_service_labels",
    "db_service_labels_expression",
    "rules",
    "request",
    "review_requests",
    "impersonate",
    "host_groups",
    "host_sudoers",
    "windows_desktop_logins",
    "windows_desktop_labels",
    "windows_desktop_labels_expression",
    "aws_role_arns",
    "azure_identities",
    "gcp_service_accounts",
    "join_sessions",
    "desktop_groups",
    "group_labels",
    "group_labels_expression",
    "spiffe",
    "github_permissions",
    "account_assignments",
    "workload_identity_labels",
    "workload_identity_labels_expression",
    "git_server_labels",
    "git_server_labels_expression",
];

/// Database spec fields of Teleport db v3 for cloud and other engines.
const TELEPORT_DB_SPEC: &[&str] = &[
    "aws",
    "gcp",
    "azure",
    "ad",
    "dynamic_labels",
    "ca_cert",
    "mysql",
    "mongo_atlas",
    "oracle",
];

/// User spec fields of Teleport user v2 that concern other login methods.
const TELEPORT_USER_SPEC: &[&str] = &[
    "oidc_identities",
    "saml_identities",
    "github_identities",
    "created_by",
    "expires",
    "status",
    "local_auth",
    "trusted_device_ids",
];

/// OIDC connector spec fields of Teleport v3 that dbward does not use (PKCE is always on).
const TELEPORT_OIDC_SPEC: &[&str] = &[
    "acr_values",
    "provider",
    "google_service_account_uri",
    "google_service_account",
    "google_admin_email",
    "client_redirect_settings",
    "mfa",
    "pkce_mode",
    "user_matchers",
    "entra_id_groups_provider",
    "request_object_mode",
];

/// Metadata fields Teleport writes that dbward does not keep.
const TELEPORT_METADATA: &[&str] = &["namespace", "expires", "revision", "id"];

/// Whether a Teleport time field means "not set": absent, null, empty or Go's zero time.
fn is_unset_time(value: &serde_yaml_ng::Value) -> bool {
    match value {
        serde_yaml_ng::Value::Null => true,
        serde_yaml_ng::Value::String(text) => {
            text.is_empty() || text.starts_with("0001-01-01T00:00:00")
        }
        _ => false,
    }
}

fn classify(kind: &str, keys: &[&str]) -> Field {
    match keys {
        ["kind"] => Field::Tag,
        ["sub_kind"] | ["status", ..] => Field::Unsupported,
        ["metadata", key, ..] if TELEPORT_METADATA.contains(key) => Field::Unsupported,
        ["spec", "options", key, ..]
            if kind == Role::KIND && TELEPORT_ROLE_OPTIONS.contains(key) =>
        {
            Field::Unsupported
        }
        ["spec", "allow" | "deny", "db_labels_expression", ..] if kind == Role::KIND => {
            Field::Refused("label expressions are not evaluated; write the selector as db_labels")
        }
        ["spec", "allow" | "deny", key, ..]
            if kind == Role::KIND && TELEPORT_ROLE_CONDITIONS.contains(key) =>
        {
            Field::Unsupported
        }
        ["spec", key, ..] if kind == Db::KIND && TELEPORT_DB_SPEC.contains(key) => {
            Field::Unsupported
        }
        ["spec", "tls", "trust_system_cert_pool", ..] if kind == Db::KIND => Field::Unsupported,
        ["spec", key, ..] if kind == User::KIND && TELEPORT_USER_SPEC.contains(key) => {
            Field::Unsupported
        }
        ["spec", key, ..] if kind == OidcConnector::KIND && TELEPORT_OIDC_SPEC.contains(key) => {
            Field::Unsupported
        }
        ["spec", "mappings", "match", "view_names" | "procedure_names", ..]
            if kind == DbObjectImportRule::KIND =>
        {
            Field::Unsupported
        }
        // Teleport's reverse tunnel address: dbward connects gateway to gateway directly.
        ["spec", "tunnel_addr", ..] if kind == TrustedCluster::KIND => Field::Unsupported,
        _ => Field::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateDbUserMode, Protocol};

    /// The example of DESIGN §4, verbatim.
    const DESIGN_EXAMPLE: &str = r#"kind: role
version: v7
metadata: {name: auto-db-users}
spec:
  options:
    create_db_user_mode: keep          # off | keep | best_effort_drop   (legacy create_db_user: true == keep)
    max_session_ttl: 8h
  allow:
    db_labels: {"*": "*"}              # values: literal, glob, or ^regex$; lists OR, keys AND
    db_names: ["*"]                    # literal or "*"
    db_users: ["{{internal.db_users}}"]  # used only when provisioning is off
    db_roles: [reader, "{{internal.db_roles}}", "{{external.db_roles}}"]
    db_permissions:                    # PostgreSQL only; exclusive with db_roles in one session
      - match: {object_kind: table, schema: public}
        permissions: [SELECT]
  deny:
    db_labels: {env: prod}
    db_roles: [admin]
---
kind: user
version: v2
metadata: {name: alice}
spec:
  roles: [auto-db-users]
  traits: {db_roles: [writer], db_users: [app]}
---
kind: db
version: v3
metadata: {name: example, labels: {env: dev}}
spec:
  protocol: postgres
  uri: localhost:5432
  admin_user: {name: teleport-admin, default_database: teleport}
"#;

    const IMPORT_RULE: &str = r#"kind: db_object_import_rule
version: v1
metadata:
  name: import_all_staging_tables
spec:
  priority: 30
  database_labels:
    - name: env
      values: [staging, dev]
  mappings:
    - scope:
        database_names: [app]
        schema_names: [public, "sales_*"]
      match:
        table_names: ["*"]
      add_labels:
        env: staging
        owner: "{{obj.schema}}"
"#;

    fn parse(text: &str) -> ParsedResources {
        match parse_resources(text, "test.yaml") {
            Ok(parsed) => parsed,
            Err(err) => panic!("{err}"),
        }
    }

    fn parse_err(text: &str, file: &str) -> String {
        match parse_resources(text, file) {
            Ok(parsed) => panic!("expected an error, got {parsed:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn design_example_parses_into_role_user_and_db() {
        let parsed = parse(DESIGN_EXAMPLE);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let kinds: Vec<_> = parsed
            .resources
            .iter()
            .map(|r| (r.kind(), r.name()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("role", "auto-db-users"),
                ("user", "alice"),
                ("db", "example")
            ]
        );
        let Resource::Role(role) = &parsed.resources[0] else {
            panic!("not a role")
        };
        assert_eq!(
            role.spec.options.effective_db_user_mode(),
            CreateDbUserMode::Keep
        );
        assert_eq!(
            role.spec.options.max_session_ttl,
            Some(std::time::Duration::from_secs(8 * 3600))
        );
        assert_eq!(
            role.spec.allow.db_roles,
            ["reader", "{{internal.db_roles}}", "{{external.db_roles}}"]
        );
        assert_eq!(role.spec.allow.db_labels, crate::Labels::wildcard());
        assert_eq!(role.spec.allow.db_permissions[0].permissions, ["SELECT"]);
        assert_eq!(role.spec.deny.db_roles, ["admin"]);
        let Resource::User(user) = &parsed.resources[1] else {
            panic!("not a user")
        };
        assert_eq!(user.spec.roles, ["auto-db-users"]);
        assert_eq!(user.spec.traits["db_users"], ["app"]);
        let Resource::Db(db) = &parsed.resources[2] else {
            panic!("not a db")
        };
        assert_eq!(db.spec.protocol, Protocol::Postgres);
        assert_eq!(db.host_port().unwrap(), ("localhost".to_string(), 5432));
        assert_eq!(
            db.admin_user().unwrap().default_database.as_deref(),
            Some("teleport")
        );
        assert_eq!(db.metadata.labels["env"], "dev");
    }

    #[test]
    fn resources_round_trip_through_yaml() {
        let mut text = String::from(DESIGN_EXAMPLE);
        text.push_str("---\n");
        text.push_str(IMPORT_RULE);
        let original = parse(&text).resources;
        assert_eq!(original.len(), 4);
        let written: Vec<String> = original.iter().map(Resource::to_yaml).collect();
        let reparsed = parse(&written.join("---\n")).resources;
        assert_eq!(reparsed, original);
    }

    #[test]
    fn resources_round_trip_through_json() {
        let mut text = String::from(DESIGN_EXAMPLE);
        text.push_str("---\n");
        text.push_str(IMPORT_RULE);
        let original = parse(&text).resources;
        for resource in &original {
            let json = serde_json::to_string_pretty(&resource.to_json_value()).unwrap();
            assert!(json.contains(&format!("\"kind\": \"{}\"", resource.kind())));
            // As a file given to `dbward create -f`.
            assert_eq!(parse(&json).resources, vec![resource.clone()]);
            // As the store reads it back.
            let back: Resource = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, resource);
        }
        let array = serde_json::to_string_pretty(&original).unwrap();
        assert_eq!(parse(&array).resources, original);
    }

    #[test]
    fn import_rule_parses_teleport_list_labels_and_mappings() {
        let parsed = parse(IMPORT_RULE);
        let Resource::DbObjectImportRule(rule) = &parsed.resources[0] else {
            panic!("not an import rule")
        };
        assert_eq!(rule.spec.priority, 30);
        let envs: Vec<_> = rule.spec.database_labels.iter().collect();
        assert_eq!(
            envs,
            [("env", &["staging".to_string(), "dev".to_string()][..])]
        );
        let mapping = &rule.spec.mappings[0];
        assert_eq!(mapping.scope.database_names, ["app"]);
        assert_eq!(mapping.scope.schema_names, ["public", "sales_*"]);
        assert_eq!(mapping.match_objects.table_names, ["*"]);
        assert_eq!(mapping.add_labels["owner"], "{{obj.schema}}");
    }

    /// A role as `tctl get role/...` prints it, with fields for SSH, Kubernetes and apps.
    const TELEPORT_ROLE: &str = r#"kind: role
metadata:
  description: Automatic database user provisioning
  id: 1712345678901234567
  name: auto-db-users
  revision: 5d2b5a4c-8a8c-4d0b-9bd5-1f0c7b7a4c3e
spec:
  allow:
    app_labels:
      '*': '*'
    db_labels:
      env: [dev, staging]
    db_names:
    - '*'
    db_roles:
    - reader
    - '{{internal.db_roles}}'
    kubernetes_groups:
    - viewers
    logins:
    - '{{internal.logins}}'
    node_labels:
      '*': '*'
    rules:
    - resources:
      - event
      verbs:
      - list
      - read
  deny: {}
  options:
    cert_format: standard
    create_db_user: true
    create_host_user_mode: off
    desktop_clipboard: true
    enhanced_recording:
    - command
    - network
    forward_agent: false
    idp:
      saml:
        enabled: true
    max_session_ttl: 30h0m0s
    pin_source_ip: false
    port_forwarding: true
    record_session:
      default: best_effort
      desktop: true
    ssh_file_copy: true
version: v7
"#;

    #[test]
    fn teleport_role_loads_with_a_warning_per_unsupported_field() {
        let parsed = parse_resources(TELEPORT_ROLE, "roles.yaml").unwrap();
        let Resource::Role(role) = &parsed.resources[0] else {
            panic!("not a role")
        };
        assert_eq!(
            role.spec.allow.db_roles,
            ["reader", "{{internal.db_roles}}"]
        );
        assert_eq!(
            role.spec.options.effective_db_user_mode(),
            CreateDbUserMode::Keep
        );
        assert_eq!(
            role.spec.options.max_session_ttl,
            Some(std::time::Duration::from_secs(30 * 3600))
        );
        let expected = [
            "roles.yaml:4: field \"metadata.id\" is not supported by dbward and is ignored",
            "roles.yaml:6: field \"metadata.revision\" is not supported by dbward and is ignored",
            "roles.yaml:9: field \"spec.allow.app_labels\" is not supported by dbward and is ignored",
            "roles.yaml:18: field \"spec.allow.kubernetes_groups\" is not supported by dbward and is ignored",
            "roles.yaml:20: field \"spec.allow.logins\" is not supported by dbward and is ignored",
            "roles.yaml:22: field \"spec.allow.node_labels\" is not supported by dbward and is ignored",
            "roles.yaml:24: field \"spec.allow.rules\" is not supported by dbward and is ignored",
            "roles.yaml:32: field \"spec.options.cert_format\" is not supported by dbward and is ignored",
            "roles.yaml:34: field \"spec.options.create_host_user_mode\" is not supported by dbward and is ignored",
            "roles.yaml:35: field \"spec.options.desktop_clipboard\" is not supported by dbward and is ignored",
            "roles.yaml:36: field \"spec.options.enhanced_recording\" is not supported by dbward and is ignored",
            "roles.yaml:39: field \"spec.options.forward_agent\" is not supported by dbward and is ignored",
            "roles.yaml:40: field \"spec.options.idp\" is not supported by dbward and is ignored",
            "roles.yaml:45: field \"spec.options.port_forwarding\" is not supported by dbward and is ignored",
            "roles.yaml:46: field \"spec.options.record_session\" is not supported by dbward and is ignored",
            "roles.yaml:49: field \"spec.options.ssh_file_copy\" is not supported by dbward and is ignored",
        ];
        assert_eq!(parsed.warnings, expected);
    }

    #[test]
    fn restricting_options_load_with_a_warning_and_survive_the_store() {
        let text = "kind: role\nversion: v7\nmetadata:\n  name: mfa\nspec:\n  options:\n    require_session_mfa: hardware_key_touch\n    device_trust_mode: required\n    max_connections: 3\n    pin_source_ip: false\n  allow:\n    db_labels: {'*': '*'}\n";
        let parsed = parse(text);
        assert_eq!(
            parsed.warnings,
            [
                "test.yaml:7: role \"mfa\": option \"require_session_mfa: \"hardware_key_touch\"\" restricts access and dbward does not enforce it: access through this role to the databases it grants is refused",
                "test.yaml:8: role \"mfa\": option \"device_trust_mode: \"required\"\" restricts access and dbward does not enforce it: access through this role to the databases it grants is refused",
            ]
        );
        // What the store keeps (JSON) still carries the options.
        let json = serde_json::to_string(&parsed.resources[0]).unwrap();
        let stored: Resource = serde_json::from_str(&json).unwrap();
        let Resource::Role(role) = stored else {
            panic!("not a role")
        };
        let fields: Vec<_> = role
            .spec
            .options
            .unenforced_restrictions()
            .into_iter()
            .map(|o| o.field)
            .collect();
        assert_eq!(fields, ["require_session_mfa", "device_trust_mode"]);
        assert_eq!(role.spec.options.max_connections_limit(), Some(3));
    }

    #[test]
    fn an_enforced_option_dbward_cannot_read_loads_with_a_warning_saying_so() {
        let text = "kind: role\nversion: v7\nmetadata:\n  name: odd\nspec:\n  options:\n    max_connections: lots\n";
        let parsed = parse(text);
        assert_eq!(
            parsed.warnings,
            ["test.yaml:7: role \"odd\": option \"max_connections: \"lots\"\" restricts access and dbward enforces it but cannot read this value: access through this role to every database is refused"]
        );
    }

    #[test]
    fn teleport_db_loads_with_warnings_for_cloud_fields() {
        let text = "kind: db\nversion: v3\nmetadata:\n  name: rds\n  expires: 2030-01-01T00:00:00Z\n  labels:\n    teleport.dev/db-admin: teleport-admin\nspec:\n  protocol: mysql\n  uri: rds.example.com:3306\n  aws:\n    region: us-east-1\n  dynamic_labels:\n    hostname: {command: [hostname], period: 1m}\n  tls:\n    mode: verify-ca\n    ca_cert_file: /etc/ca.pem\n    trust_system_cert_pool: true\n";
        let parsed = parse_resources(text, "dbs.yaml").unwrap();
        assert_eq!(
            parsed.warnings,
            [
                "dbs.yaml:5: field \"metadata.expires\" is not supported by dbward and is ignored",
                "dbs.yaml:11: field \"spec.aws\" is not supported by dbward and is ignored",
                "dbs.yaml:13: field \"spec.dynamic_labels\" is not supported by dbward and is ignored",
                "dbs.yaml:18: field \"spec.tls.trust_system_cert_pool\" is not supported by dbward and is ignored",
            ]
        );
        let Resource::Db(db) = &parsed.resources[0] else {
            panic!("not a db")
        };
        assert_eq!(db.spec.tls.mode, crate::TlsMode::VerifyCa);
        assert_eq!(db.spec.tls.ca_cert_file.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(db.admin_user().unwrap().name, "teleport-admin");
    }

    const PEM: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUKq\n-----END CERTIFICATE-----\n";

    #[test]
    fn db_tls_ca_cert_is_pem_text_as_in_teleport() {
        let indented: String = PEM.lines().map(|l| format!("      {l}\n")).collect();
        let text = format!(
            "kind: db\nversion: v3\nmetadata:\n  name: pg\nspec:\n  protocol: postgres\n  uri: db.internal:5432\n  tls:\n    mode: verify-full\n    ca_cert: |\n{indented}"
        );
        let parsed = parse(&text);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        let Resource::Db(db) = &parsed.resources[0] else {
            panic!("not a db")
        };
        assert_eq!(db.spec.tls.ca_cert.as_deref(), Some(PEM));
        assert_eq!(db.spec.tls.ca_pem().unwrap().as_deref(), Some(PEM));
        // Kept through the store.
        let json = serde_json::to_string(&parsed.resources[0]).unwrap();
        assert_eq!(
            serde_json::from_str::<Resource>(&json).unwrap(),
            parsed.resources[0]
        );

        // A path where Teleport expects PEM text is refused with the key to use instead.
        let err = parse_err(
            "kind: db\nversion: v3\nmetadata: {name: pg}\nspec:\n  protocol: postgres\n  uri: h\n  tls: {ca_cert: /etc/ca.pem}\n",
            "dbs.yaml",
        );
        assert!(err.starts_with("dbs.yaml:3: "), "{err}");
        assert!(err.contains("ca_cert_file"), "{err}");
        let err = parse_err(
            &text.replace("    mode: verify-full\n", "    ca_cert_file: /etc/ca.pem\n"),
            "dbs.yaml",
        );
        assert!(err.contains("not both"), "{err}");

        // dbward's file key still works.
        let path = std::env::temp_dir().join(format!("dbward-model-ca-{}.pem", std::process::id()));
        std::fs::write(&path, PEM).unwrap();
        let mut tls = crate::DbTls {
            ca_cert_file: Some(path.display().to_string()),
            ..crate::DbTls::default()
        };
        assert_eq!(tls.ca_pem().unwrap().as_deref(), Some(PEM));
        tls.ca_cert_file = None;
        assert_eq!(tls.ca_pem().unwrap(), None);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn misspelled_field_is_an_error_with_its_line() {
        let text = "kind: user\nversion: v2\nmetadata: {name: bob}\nspec:\n  roles: [a]\n---\n# second\nkind: role\nversion: v7\nmetadata:\n  name: dev\nspec:\n  allow:\n    db_lables: {env: dev}\n";
        assert_eq!(
            parse_err(text, "roles.yaml"),
            "roles.yaml:14: unknown field \"db_lables\""
        );
    }

    #[test]
    fn a_reserved_db_role_in_allow_is_an_error_with_its_line() {
        let text = "kind: role\nversion: v7\nmetadata: {name: a}\n---\nkind: role\nversion: v7\nmetadata:\n  name: sneaky\nspec:\n  allow:\n    db_roles: [reader, dbward-auto-user]\n";
        assert_eq!(
            parse_err(text, "roles.yaml"),
            "roles.yaml:7: role \"sneaky\": allow.db_roles: \"dbward-auto-user\" can never be granted: it is the role that marks the users dbward manages"
        );
    }

    #[test]
    fn misspelled_top_level_key_in_a_list_element_is_located() {
        let text = "- kind: user\n  version: v2\n  metadata: {name: bob}\n- kind: user\n  version: v2\n  metdata: {name: eve}\n";
        assert_eq!(
            parse_err(text, "users.yaml"),
            "users.yaml:6: unknown field \"metdata\""
        );
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let text = "kind: role\nversion: v7\nmetadata: {name: a}\n---\nkind: role\nmetadata:\n  name: b\n   bad: indentation\n";
        let err = parse_err(text, "roles.yaml");
        assert!(err.starts_with("roles.yaml:8: "), "{err}");
        assert!(!err.contains("column"), "{err}");
    }

    #[test]
    fn wrong_value_type_names_the_line_of_the_value() {
        let text = "kind: role\nversion: v7\nmetadata:\n  name: a\nspec:\n  options:\n    create_db_user_mode: sometimes\n";
        let err = parse_err(text, "roles.yaml");
        assert!(err.starts_with("roles.yaml:7: "), "{err}");
        assert!(err.contains("sometimes"), "{err}");
    }

    #[test]
    fn unknown_kinds_are_skipped_with_a_warning_and_a_missing_kind_is_an_error() {
        let parsed = parse("kind: node\nversion: v2\nmetadata: {name: a}\n");
        assert!(parsed.resources.is_empty());
        assert_eq!(
            parsed.warnings,
            ["test.yaml:1: kind \"node\" is not supported by dbward; resource \"a\" skipped"]
        );
        let err = parse_err("---\nversion: v2\nmetadata: {name: a}\n", "x.yaml");
        assert!(err.contains("missing field \"kind\""), "{err}");
    }

    /// What `tctl get all` prints, abridged: several kinds, Teleport's own fields, users with
    /// null traits, status and created_by.
    const TCTL_GET_ALL: &str = r#"kind: cluster_auth_preference
metadata:
  name: cluster-auth-preference
  revision: 3d1a7f8e-1b7c-4d44-9d1f-1f3f0a6a1b1e
spec:
  second_factor: "on"
  type: local
version: v2
---
kind: role
metadata:
  name: auto-db-users
  revision: 9f8e7d6c-5b4a-3c2d-1e0f-a1b2c3d4e5f6
spec:
  allow:
    db_labels:
      '*': '*'
    db_names:
    - '*'
    db_roles:
    - reader
    - '{{internal.db_roles}}'
  deny: {}
  options:
    create_db_user_mode: keep
    max_session_ttl: 30h0m0s
version: v7
---
kind: user
metadata:
  name: alice
  revision: 0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d
spec:
  created_by:
    connector: null
    time: "2024-05-02T10:11:12.123456Z"
    user:
      name: admin
  expires: "0001-01-01T00:00:00Z"
  roles:
  - auto-db-users
  status:
    is_locked: false
    lock_expires: "0001-01-01T00:00:00Z"
    locked_time: "0001-01-01T00:00:00Z"
    recovery_attempt_lock_expires: "0001-01-01T00:00:00Z"
  traits:
    aws_role_arns: null
    db_names: null
    db_roles:
    - writer
    db_users: null
    kubernetes_groups: null
    logins: null
version: v2
---
kind: node
metadata:
  name: 5e6f7a8b-host
spec:
  addr: 10.0.0.5:3022
  hostname: host
version: v2
"#;

    #[test]
    fn tctl_get_all_loads_known_kinds_and_skips_the_others_once_each() {
        let parsed = parse(TCTL_GET_ALL);
        let names: Vec<_> = parsed
            .resources
            .iter()
            .map(|r| format!("{}/{}", r.kind(), r.name()))
            .collect();
        assert_eq!(names, ["role/auto-db-users", "user/alice"]);
        let skipped: Vec<_> = parsed
            .warnings
            .iter()
            .filter(|w| w.contains("skipped"))
            .collect();
        assert_eq!(
            skipped,
            [
                "test.yaml:1: kind \"cluster_auth_preference\" is not supported by dbward; resource \"cluster-auth-preference\" skipped",
                "test.yaml:57: kind \"node\" is not supported by dbward; resource \"5e6f7a8b-host\" skipped",
            ]
        );
        let Resource::User(alice) = &parsed.resources[1] else {
            panic!("not a user")
        };
        assert_eq!(alice.spec.roles, ["auto-db-users"]);
        // Null traits hold nothing; the others keep their values.
        assert_eq!(alice.spec.traits.len(), 1, "{:?}", alice.spec.traits);
        assert_eq!(alice.spec.traits["db_roles"], ["writer"]);
        for field in ["spec.created_by", "spec.expires", "spec.status"] {
            assert!(
                parsed.warnings.iter().any(|w| w.contains(field)),
                "{field}: {:?}",
                parsed.warnings
            );
        }
    }

    #[test]
    fn locked_users_and_expiring_resources_are_refused_not_loaded_with_more_access() {
        let locked = TCTL_GET_ALL.replace("is_locked: false", "is_locked: true");
        let err = parse_resources(&locked, "test.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.yaml:") && err.contains("spec.status.is_locked"),
            "{err}"
        );
        let expiring = TCTL_GET_ALL.replace(
            "  expires: \"0001-01-01T00:00:00Z\"",
            "  expires: \"2027-01-01T00:00:00Z\"",
        );
        let err = parse_resources(&expiring, "test.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.expires"), "{err}");
        let text = "kind: role\nversion: v7\nmetadata: {name: r, expires: \"2027-01-01T00:00:00Z\"}\nspec: {}\n";
        let err = parse_resources(text, "test.yaml").unwrap_err().to_string();
        assert_eq!(
            err,
            "test.yaml:3: field \"metadata.expires\" sets an expiry, which dbward does not enforce; remove it to load the resource without one"
        );
    }

    #[test]
    fn a_user_naming_a_missing_role_is_refused_with_its_line() {
        let parsed = parse(TCTL_GET_ALL);
        parsed.check_user_roles(&|_| false).unwrap();
        let text = "kind: user\nversion: v2\nmetadata: {name: bob}\nspec:\n  roles: [auto-db-users, ghost]\n";
        let parsed = parse(text);
        let err = parsed
            .check_user_roles(&|r| r == "auto-db-users")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.yaml:3: user \"bob\": role \"ghost\" does not exist; create it first"
        );
        parsed
            .check_user_roles(&|r| r == "auto-db-users" || r == "ghost")
            .unwrap();
    }

    #[test]
    fn role_versions_apply_teleports_defaults() {
        let role = |version: &str, allow: &str| {
            let text = format!(
                "kind: role\nversion: {version}\nmetadata: {{name: r}}\nspec:\n  allow: {allow}\n"
            );
            let parsed = parse(&text);
            let Resource::Role(role) = parsed.resources[0].clone() else {
                panic!("not a role")
            };
            role
        };
        // v3: no db_labels means every database.
        assert_eq!(
            role("v3", "{db_users: [app]}").spec.allow.db_labels,
            crate::Labels::wildcard()
        );
        assert_eq!(
            role("v3", "{db_labels: null}").spec.allow.db_labels,
            crate::Labels::wildcard()
        );
        // An explicit empty selector stays empty, and written labels are kept.
        assert!(role("v3", "{db_labels: {}}")
            .spec
            .allow
            .db_labels
            .is_empty());
        assert_eq!(
            role("v3", "{db_labels: {env: dev}}").spec.allow.db_labels,
            crate::Labels::new().with("env", "dev")
        );
        // v4 and later: no db_labels selects nothing.
        for v in ["v4", "v5", "v6", "v7", "v8"] {
            assert!(
                role(v, "{db_users: [app]}").spec.allow.db_labels.is_empty(),
                "{v}"
            );
        }
        assert!(
            parse_err("kind: role\nversion: v9\nmetadata: {name: r}\n", "r.yaml")
                .contains("v3 to v8")
        );
    }

    #[test]
    fn an_extra_check_failing_names_file_and_line() {
        let text = "kind: role\nversion: v7\nmetadata: {name: a}\n---\nkind: role\nversion: v7\nmetadata:\n  name: broken\n";
        let err = parse_resources_with(text, "r.yaml", &|r| {
            if r.name() == "broken" {
                Err("role \"broken\": bad template".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "r.yaml:7: role \"broken\": bad template");
    }

    #[test]
    fn star_in_allowed_db_roles_is_refused_with_location() {
        let text = "kind: role\nversion: v7\nmetadata:\n  name: bad\nspec:\n  allow:\n    db_roles: ['*']\n";
        let err = parse_err(text, "roles.yaml");
        assert!(err.starts_with("roles.yaml:3: role \"bad\""), "{err}");
        assert!(err.contains("db_roles"), "{err}");
    }

    #[test]
    fn permissions_are_upper_cased_and_unknown_ones_refused() {
        let text = "kind: role\nversion: v7\nmetadata: {name: p}\nspec:\n  allow:\n    db_permissions:\n      - match: {object_kind: table}\n        permissions: [select, Insert]\n";
        let parsed = parse(text);
        let Resource::Role(role) = &parsed.resources[0] else {
            panic!("not a role")
        };
        assert_eq!(
            role.spec.allow.db_permissions[0].permissions,
            ["SELECT", "INSERT"]
        );
        let bad = text.replace("Insert", "EXECUTE");
        let err = parse_err(&bad, "roles.yaml");
        assert!(err.contains("unknown permission \"EXECUTE\""), "{err}");
    }

    #[test]
    fn label_expressions_are_refused_rather_than_ignored() {
        let text = "kind: role\nversion: v7\nmetadata: {name: e}\nspec:\n  deny:\n    db_labels_expression: 'labels.env == \"prod\"'\n";
        let err = parse_err(text, "roles.yaml");
        assert!(err.starts_with("roles.yaml:6: "), "{err}");
    }

    #[test]
    fn the_same_resource_twice_in_a_file_is_refused() {
        let text = "kind: user\nversion: v2\nmetadata: {name: a}\n---\nkind: role\nmetadata: {name: a}\n---\nkind: user\nversion: v2\nmetadata: {name: a}\n";
        assert_eq!(
            parse_err(text, "u.yaml"),
            "u.yaml:10: user \"a\" appears more than once in this file"
        );
    }

    #[test]
    fn json_with_tabs_and_unknown_fields_is_located() {
        let text = "{\n\t\"kind\": \"user\",\n\t\"version\": \"v2\",\n\t\"metadata\": {\"name\": \"a\"},\n\t\"spec\": {\"roles\": [\"r\"], \"rolez\": []}\n}\n";
        assert_eq!(
            parse_err(text, "u.json"),
            "u.json:5: unknown field \"rolez\""
        );
        let ok = text.replace(", \"rolez\": []", "");
        assert_eq!(parse(&ok).resources[0].name(), "a");
    }

    #[test]
    fn empty_documents_and_comments_are_skipped() {
        let text = "# roles\n---\n---\nkind: user\nversion: v2\nmetadata: {name: a}\n---\n# end\n";
        assert_eq!(parse(text).resources.len(), 1);
        assert!(parse("").resources.is_empty());
    }
}
