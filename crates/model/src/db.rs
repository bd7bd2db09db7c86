//! The `db` resource (Teleport db v3 shape): a database dbward proxies to, how to reach it
//! over TLS, and which admin account provisions users in it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Metadata, ModelError};

/// Label naming the admin user when `spec.admin_user` is absent (set by discovery tools).
pub const LABEL_DB_ADMIN: &str = "teleport.dev/db-admin";
/// Label naming the admin's default database when `spec.admin_user` is absent.
pub const LABEL_DB_ADMIN_DEFAULT_DATABASE: &str = "teleport.dev/db-admin-default-database";
/// dbward's own spelling of [`LABEL_DB_ADMIN`]; wins when both are set.
pub const DBWARD_LABEL_DB_ADMIN: &str = "dbward.dev/db-admin";
/// dbward's own spelling of [`LABEL_DB_ADMIN_DEFAULT_DATABASE`].
pub const DBWARD_LABEL_DB_ADMIN_DEFAULT_DATABASE: &str = "dbward.dev/db-admin-default-database";

/// Label listing the PostgreSQL predefined roles (`pg_*`) that may be granted to provisioned
/// users of this database, comma separated (`pg_read_all_data,pg_monitor`). Without it no
/// predefined role is ever granted.
pub const DBWARD_LABEL_ALLOW_PREDEFINED_ROLES: &str = "dbward.dev/allow-predefined-roles";

/// Label of a `db` resource that lets `db_permissions` grant TRIGGER (value `true`). Without
/// it TRIGGER is left out: a trigger the user creates runs its code as every user that writes
/// to the table, and outlives the session (PROVISIONING.md §8).
pub const DBWARD_LABEL_ALLOW_TRIGGER: &str = "dbward.dev/allow-trigger-permission";

/// A database resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Db {
    /// `v3`.
    #[serde(default = "default_db_version")]
    pub version: String,
    /// Name (what users pass to `dbward db login`) and labels (what roles select on).
    #[serde(default)]
    pub metadata: Metadata,
    /// How to reach the database.
    pub spec: DbSpec,
}

fn default_db_version() -> String {
    "v3".to_string()
}

/// The body of a `db`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbSpec {
    /// Wire protocol.
    pub protocol: Protocol,
    /// `host:port`, `host` (default port of the protocol) or a `postgres://` / `mysql://` URL.
    pub uri: String,
    /// TLS towards the database.
    #[serde(default, skip_serializing_if = "DbTls::is_default")]
    pub tls: DbTls,
    /// The account dbward provisions users with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_user: Option<AdminUser>,
}

/// The database's wire protocol. `mysql` covers MariaDB and MySQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    Mysql,
}

impl Protocol {
    /// The name as written in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
        }
    }

    /// The port a database of this protocol listens on unless told otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Postgres => 5432,
            Protocol::Mysql => 3306,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "postgres" => Ok(Protocol::Postgres),
            "mysql" => Ok(Protocol::Mysql),
            other => Err(ModelError::invalid(
                "protocol",
                format!("unsupported protocol \"{other}\", expected postgres or mysql"),
            )),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// TLS settings towards the database.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DbTls {
    /// How much of the server certificate is checked.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the CA that signed the database's certificate; default: dbward's db CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_file: Option<String>,
    /// The same CA as PEM text (Teleport's `tls.ca_cert`); at most one of the two is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// Name checked in the server certificate; default: the host part of the uri.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl DbTls {
    fn is_default(&self) -> bool {
        self == &DbTls::default()
    }

    /// The CA certificate(s) to verify the database with, as PEM: the text of `ca_cert`, or
    /// the content of `ca_cert_file`; `None` when neither is set (dbward's db CA applies).
    pub fn ca_pem(&self) -> Result<Option<String>, ModelError> {
        if let Some(pem) = self.ca_cert.as_ref().filter(|p| !p.trim().is_empty()) {
            return Ok(Some(pem.clone()));
        }
        match self.ca_cert_file.as_ref().filter(|p| !p.is_empty()) {
            Some(path) => std::fs::read_to_string(path)
                .map(Some)
                .map_err(|err| ModelError::File {
                    file: path.clone(),
                    message: format!("reading tls.ca_cert_file: {err}"),
                }),
            None => Ok(None),
        }
    }

    fn validate(&self, subject: &str) -> Result<(), ModelError> {
        let Some(pem) = self.ca_cert.as_ref().filter(|p| !p.trim().is_empty()) else {
            return Ok(());
        };
        if self.ca_cert_file.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(ModelError::invalid(
                subject,
                "spec.tls: set ca_cert (PEM text) or ca_cert_file (a path), not both",
            ));
        }
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ModelError::invalid(
                subject,
                "spec.tls.ca_cert must hold the CA certificate as PEM text \
                 (-----BEGIN CERTIFICATE-----); for a file path use spec.tls.ca_cert_file",
            ));
        }
        Ok(())
    }
}

/// `tls.mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsMode {
    /// Check the chain and the server name.
    #[default]
    VerifyFull,
    /// Check the chain only.
    VerifyCa,
    /// Check nothing (tests and trusted networks only).
    Insecure,
}

impl TlsMode {
    /// The name as written in files.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::VerifyFull => "verify-full",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::Insecure => "insecure",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TlsMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "verify-full" => Ok(TlsMode::VerifyFull),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "insecure" => Ok(TlsMode::Insecure),
            other => Err(ModelError::invalid(
                "tls.mode",
                format!("unknown value \"{other}\", expected verify-full, verify-ca or insecure"),
            )),
        }
    }
}

impl Serialize for TlsMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The database account dbward provisions users with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminUser {
    /// Account name in the database.
    pub name: String,
    /// Database the admin connects to (PostgreSQL) or the schema holding dbward's bookkeeping
    /// (MariaDB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_database: Option<String>,
}

impl Db {
    /// The resource kind as written in files.
    pub const KIND: &'static str = "db";

    /// A database with a name, protocol and uri, verify-full TLS and no admin.
    pub fn new(name: &str, protocol: Protocol, uri: &str) -> Self {
        Db {
            version: default_db_version(),
            metadata: Metadata::named(name),
            spec: DbSpec {
                protocol,
                uri: uri.to_string(),
                tls: DbTls::default(),
                admin_user: None,
            },
        }
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The admin account: `spec.admin_user`, else the discovery labels
    /// (`dbward.dev/db-admin`, then `teleport.dev/db-admin`, each with its
    /// `-default-database` companion).
    pub fn admin_user(&self) -> Option<AdminUser> {
        if let Some(admin) = &self.spec.admin_user {
            if !admin.name.trim().is_empty() {
                return Some(admin.clone());
            }
        }
        let labels = &self.metadata.labels;
        for (name_key, db_key) in [
            (
                DBWARD_LABEL_DB_ADMIN,
                DBWARD_LABEL_DB_ADMIN_DEFAULT_DATABASE,
            ),
            (LABEL_DB_ADMIN, LABEL_DB_ADMIN_DEFAULT_DATABASE),
        ] {
            if let Some(name) = labels.get(name_key).filter(|n| !n.trim().is_empty()) {
                return Some(AdminUser {
                    name: name.clone(),
                    default_database: labels.get(db_key).filter(|d| !d.is_empty()).cloned(),
                });
            }
        }
        None
    }

    /// Whether `db_permissions` may grant TRIGGER here ([`DBWARD_LABEL_ALLOW_TRIGGER`]).
    pub fn allows_trigger_permission(&self) -> bool {
        self.metadata
            .labels
            .get(DBWARD_LABEL_ALLOW_TRIGGER)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// The PostgreSQL predefined roles this database allows as db roles (the
    /// [`DBWARD_LABEL_ALLOW_PREDEFINED_ROLES`] label), sorted, without duplicates or blanks.
    pub fn allowed_predefined_roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = self
            .metadata
            .labels
            .get(DBWARD_LABEL_ALLOW_PREDEFINED_ROLES)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        roles.sort();
        roles.dedup();
        roles
    }

    /// Host and port from `spec.uri`, with the protocol's default port when none is given.
    pub fn host_port(&self) -> Result<(String, u16), ModelError> {
        parse_host_port(&self.spec.uri, self.spec.protocol.default_port()).map_err(|message| {
            ModelError::invalid(format!("db \"{}\"", self.metadata.name), message)
        })
    }

    /// Checks name, version, uri and admin user.
    pub fn validate(&self) -> Result<(), ModelError> {
        let subject = format!("db \"{}\"", self.metadata.name);
        self.metadata.validate(&subject)?;
        if self.version != "v3" {
            return Err(ModelError::invalid(
                subject,
                format!("unsupported version \"{}\", expected v3", self.version),
            ));
        }
        if self.spec.uri.trim().is_empty() {
            return Err(ModelError::invalid(subject, "spec.uri must not be empty"));
        }
        self.host_port()?;
        self.spec.tls.validate(&subject)?;
        if let Some(admin) = &self.spec.admin_user {
            if admin.name.trim().is_empty() {
                return Err(ModelError::invalid(
                    subject,
                    "spec.admin_user.name must not be empty",
                ));
            }
        }
        if let Some(role) = self
            .allowed_predefined_roles()
            .into_iter()
            .find(|r| !r.starts_with("pg_"))
        {
            return Err(ModelError::invalid(
                subject,
                format!(
                    "label {DBWARD_LABEL_ALLOW_PREDEFINED_ROLES}: \"{role}\" is not a PostgreSQL predefined role (pg_*)"
                ),
            ));
        }
        Ok(())
    }
}

/// Splits `host:port`, `[v6]:port`, `host` or `scheme://user@host:port/path?query`.
fn parse_host_port(uri: &str, default_port: u16) -> Result<(String, u16), String> {
    let mut rest = uri.trim();
    if let Some((_, after)) = rest.split_once("://") {
        rest = after;
    }
    if let Some(end) = rest.find(['/', '?']) {
        rest = &rest[..end];
    }
    if let Some((_, after)) = rest.rsplit_once('@') {
        rest = after;
    }
    let bad = || format!("spec.uri \"{uri}\" is not of the form host:port");
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("spec.uri \"{uri}\" has an invalid port \"{p}\""))?,
        None => default_port,
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_uses_the_protocol_default_port() {
        let pg = Db::new("a", Protocol::Postgres, "db.internal");
        assert_eq!(pg.host_port().unwrap(), ("db.internal".to_string(), 5432));
        let my = Db::new("b", Protocol::Mysql, "db.internal");
        assert_eq!(my.host_port().unwrap(), ("db.internal".to_string(), 3306));
    }

    #[test]
    fn host_port_reads_urls_and_ipv6() {
        let cases = [
            ("localhost:5433", "localhost", 5433),
            (
                "postgres://app@db1:6543/dbward?sslmode=verify-full",
                "db1",
                6543,
            ),
            ("mysql://db2/x", "db2", 5432),
            ("[::1]:15432", "::1", 15432),
            ("[::1]", "::1", 5432),
        ];
        for (uri, host, port) in cases {
            let db = Db::new("a", Protocol::Postgres, uri);
            assert_eq!(db.host_port().unwrap(), (host.to_string(), port), "{uri}");
        }
    }

    #[test]
    fn host_port_refuses_bad_ports_and_empty_hosts() {
        for uri in ["db:0", "db:99999", "db:x", ":5432", "[::1"] {
            let db = Db::new("a", Protocol::Postgres, uri);
            assert!(db.host_port().is_err(), "{uri} should be refused");
        }
    }

    #[test]
    fn admin_user_comes_from_spec_before_labels() {
        let mut db = Db::new("a", Protocol::Postgres, "h:1");
        db.metadata
            .labels
            .insert(LABEL_DB_ADMIN.into(), "from-label".into());
        db.spec.admin_user = Some(AdminUser {
            name: "from-spec".into(),
            default_database: None,
        });
        assert_eq!(db.admin_user().unwrap().name, "from-spec");
    }

    #[test]
    fn admin_user_falls_back_to_teleport_discovery_labels() {
        let mut db = Db::new("a", Protocol::Postgres, "h:1");
        assert_eq!(db.admin_user(), None);
        db.metadata
            .labels
            .insert(LABEL_DB_ADMIN.into(), "teleport-admin".into());
        db.metadata
            .labels
            .insert(LABEL_DB_ADMIN_DEFAULT_DATABASE.into(), "teleport".into());
        assert_eq!(
            db.admin_user(),
            Some(AdminUser {
                name: "teleport-admin".into(),
                default_database: Some("teleport".into()),
            })
        );
    }

    #[test]
    fn allowed_predefined_roles_come_from_a_comma_separated_label() {
        let mut db = Db::new("a", Protocol::Postgres, "h:1");
        assert!(db.allowed_predefined_roles().is_empty());
        db.metadata.labels.insert(
            DBWARD_LABEL_ALLOW_PREDEFINED_ROLES.into(),
            " pg_read_all_data, pg_monitor,,pg_monitor ".into(),
        );
        assert_eq!(
            db.allowed_predefined_roles(),
            ["pg_monitor", "pg_read_all_data"]
        );
        db.validate().unwrap();
        db.metadata.labels.insert(
            DBWARD_LABEL_ALLOW_PREDEFINED_ROLES.into(),
            "pg_monitor,reader".into(),
        );
        let err = db.validate().unwrap_err().to_string();
        assert!(err.contains("\"reader\""), "{err}");
    }

    #[test]
    fn admin_user_accepts_dbward_labels() {
        let mut db = Db::new("a", Protocol::Mysql, "h:1");
        db.metadata
            .labels
            .insert(DBWARD_LABEL_DB_ADMIN.into(), "dw-admin".into());
        assert_eq!(
            db.admin_user(),
            Some(AdminUser {
                name: "dw-admin".into(),
                default_database: None,
            })
        );
    }
}
