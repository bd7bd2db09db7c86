//! Resource documents (`kind` / `version` / `metadata` / `spec`) and the file parser behind
//! `dbward create -f`.
//!
//! Files written for Teleport (role v7, user v2, db v3, db_object_import_rule v1) load
//! unchanged: fields that Teleport knows but dbward does not use are reported as warnings,
//! while misspelled fields are errors, both with `file:line`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::source::{self, Document, FieldPath};
use crate::{Db, DbObjectImportRule, ModelError, Role, User};

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
}

/// Every kind, as written in files.
pub const KINDS: [&str; 4] = [Role::KIND, User::KIND, Db::KIND, DbObjectImportRule::KIND];

impl Resource {
    /// `role`, `user`, `db` or `db_object_import_rule`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Role(_) => Role::KIND,
            Resource::User(_) => User::KIND,
            Resource::Db(_) => Db::KIND,
            Resource::DbObjectImportRule(_) => DbObjectImportRule::KIND,
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
        }
    }

    /// The version as written.
    pub fn version(&self) -> &str {
        match self {
            Resource::Role(r) => &r.version,
            Resource::User(u) => &u.version,
            Resource::Db(d) => &d.version,
            Resource::DbObjectImportRule(r) => &r.version,
        }
    }

    /// Checks the rules of the resource's kind.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Resource::Role(r) => r.validate(),
            Resource::User(u) => u.validate(),
            Resource::Db(d) => d.validate(),
            Resource::DbObjectImportRule(r) => r.validate(),
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
impl From<DbObjectImportRule> for Resource {
    fn from(r: DbObjectImportRule) -> Self {
        Resource::DbObjectImportRule(r)
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
            other => return Err(D::Error::custom(unknown_kind(other))),
        };
        resource.map_err(D::Error::custom)
    }
}

fn unknown_kind(kind: &str) -> String {
    format!("unknown kind \"{kind}\", expected role, user, db or db_object_import_rule")
}

/// What [`parse_resources`] read from a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedResources {
    /// The resources, in file order, validated.
    pub resources: Vec<Resource>,
    /// `file:line: field "x" is not supported by dbward and is ignored` lines.
    pub warnings: Vec<String>,
}

/// Reads every resource of a file: multi-document YAML (`---`), a YAML list of resources, one
/// JSON object or a JSON array. Each resource is normalised and validated.
///
/// Errors name the file and line: `roles.yaml:7: unknown field "db_lables"`.
pub fn parse_resources(text: &str, file_name: &str) -> Result<ParsedResources, ModelError> {
    let mut out = ParsedResources::default();
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
                    parse_one(&doc, Some(i), item, file_name, &mut out)?;
                }
            }
            item => parse_one(&doc, None, &item, file_name, &mut out)?,
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
        Some(_) => return Err(parse_error(line_of(&["kind"]), "kind must be a string".into())),
        None => return Err(parse_error(line_of(&[]), "missing field \"kind\"".into())),
    };
    let (mut resource, ignored) = match kind {
        Role::KIND => decode::<Role>(doc, index, file).map(|(r, i)| (Resource::Role(r), i))?,
        User::KIND => decode::<User>(doc, index, file).map(|(u, i)| (Resource::User(u), i))?,
        Db::KIND => decode::<Db>(doc, index, file).map(|(d, i)| (Resource::Db(d), i))?,
        DbObjectImportRule::KIND => decode::<DbObjectImportRule>(doc, index, file)
            .map(|(r, i)| (Resource::DbObjectImportRule(r), i))?,
        other => return Err(parse_error(line_of(&["kind"]), unknown_kind(other))),
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
    if let Resource::Role(role) = &mut resource {
        role.normalize();
    }
    resource.validate().map_err(|err| {
        let line = line_of(&["metadata"]);
        parse_error(line, err.to_string())
    })?;
    out.resources.push(resource);
    Ok(())
}

/// The line of the first key of a list element, for errors about the element as a whole.
fn first_key_line(doc: &Document<'_>, prefix: &[source::Seg]) -> Option<usize> {
    ["kind", "version", "metadata", "spec"].iter().find_map(|k| {
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

/// Role options that Teleport role v5–v7 defines and dbward does not use.
const TELEPORT_ROLE_OPTIONS: &[&str] = &[
    "forward_agent",
    "port_forwarding",
    "ssh_port_forwarding",
    "cert_format",
    "client_idle_timeout",
    "disconnect_expired_cert",
    "bpf",
    "enhanced_recording",
    "permit_x11_forwarding",
    "max_connections",
    "max_sessions",
    "max_kubernetes_connections",
    "request_access",
    "request_prompt",
    "require_session_mfa",
    "mfa_verification_interval",
    "lock",
    "record_session",
    "desktop_clipboard",
    "desktop_directory_sharing",
    "pin_source_ip",
    "ssh_file_copy",
    "create_host_user",
    "create_host_user_mode",
    "create_host_user_default_shell",
    "create_desktop_user",
    "cert_extensions",
    "idp",
    "device_trust_mode",
];

/// Allow/deny conditions that Teleport role v5–v7 defines for other resource types.
const TELEPORT_ROLE_CONDITIONS: &[&str] = &[
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

/// Metadata fields Teleport writes that dbward does not keep.
const TELEPORT_METADATA: &[&str] = &["namespace", "expires", "revision", "id"];

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
            Field::Refused(
                "label expressions are not evaluated; write the selector as db_labels",
            )
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
        ["spec", "mappings", "match", "view_names" | "procedure_names", ..]
            if kind == DbObjectImportRule::KIND =>
        {
            Field::Unsupported
        }
        _ => Field::Unknown,
    }
}
