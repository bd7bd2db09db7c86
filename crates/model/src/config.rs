//! The configuration file `dbward.yaml` (`dbward start -c dbward.yaml`).
//!
//! Every key is optional; unknown keys are errors that name the key and its line, so that a
//! typo never silently leaves a listener at its default address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::labels::string_map;
use crate::source::{self, Document};
use crate::{AdminUser, Db, DbSpec, DbTls, Metadata, ModelError, Protocol};

/// The parsed configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `v1`.
    #[serde(default = "default_version")]
    pub version: String,
    /// Cluster name put in certificates; default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// CA keys, SQLite store, audit log, admin identity. [`Config::load`] makes a relative
    /// path relative to the configuration file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Host name put in listener certificates and printed commands.
    #[serde(default = "default_public_addr")]
    pub public_addr: String,
    /// HTTPS API address.
    #[serde(default = "default_web_listen_addr")]
    pub web_listen_addr: String,
    /// PostgreSQL protocol listener; `None` (key set to `""`) disables it.
    #[serde(
        default = "default_postgres_listen_addr",
        deserialize_with = "empty_is_none"
    )]
    pub postgres_listen_addr: Option<String>,
    /// MySQL/MariaDB protocol listener; `None` (key set to `""`) disables it.
    #[serde(
        default = "default_mysql_listen_addr",
        deserialize_with = "empty_is_none"
    )]
    pub mysql_listen_addr: Option<String>,
    /// Default lifetime of user certificates (capped by the roles' `max_session_ttl`).
    #[serde(default = "default_cert_ttl", with = "crate::duration::serde_duration")]
    pub cert_ttl: Duration,
    /// Prometheus `GET /metrics` over plain HTTP; `None` (absent or `""`, the default) turns
    /// it off.
    #[serde(
        default,
        deserialize_with = "empty_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics_listen_addr: Option<String>,
    /// How the gateway writes its log: `text` (default) or `json` (one object a line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Where resources, CAs and audit events are kept.
    #[serde(default)]
    pub storage: Storage,
    /// Audit events are also appended here as JSON lines, for log shippers; off when unset.
    /// A relative path is taken relative to the configuration file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_file: Option<PathBuf>,
    /// Record every client statement as a `db.session.query` event (default). `false` keeps
    /// every other event (sessions, provisioning, logins) and drops only the statements; meant
    /// for measuring what the statement audit costs, not for production.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub audit_queries: bool,
    /// Static databases; more can be created at run time as `db` resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<StaticDb>,
    /// Bounds on what clients that have not authenticated yet may hold.
    #[serde(default)]
    pub limits: Limits,
}

fn default_true() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}
fn default_version() -> String {
    "v1".to_string()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./dbward-data")
}
fn default_public_addr() -> String {
    "localhost".to_string()
}
fn default_web_listen_addr() -> String {
    "127.0.0.1:3080".to_string()
}
fn default_postgres_listen_addr() -> Option<String> {
    Some("127.0.0.1:3432".to_string())
}
fn default_mysql_listen_addr() -> Option<String> {
    Some("127.0.0.1:3036".to_string())
}
fn default_cert_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// `""` and null both disable a listener.
fn empty_is_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.trim().is_empty()))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: default_version(),
            cluster_name: None,
            data_dir: default_data_dir(),
            public_addr: default_public_addr(),
            web_listen_addr: default_web_listen_addr(),
            postgres_listen_addr: default_postgres_listen_addr(),
            mysql_listen_addr: default_mysql_listen_addr(),
            cert_ttl: default_cert_ttl(),
            metrics_listen_addr: None,
            log_format: LogFormat::default(),
            storage: Storage::default(),
            audit_file: None,
            audit_queries: true,
            databases: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// `limits:`: how long and how many connections may stay open before they authenticate,
/// on every listener (web, postgres, mysql), and how many password checks run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Time from accepting a connection to a complete TLS handshake and the first request
    /// (HTTP headers, PostgreSQL StartupMessage, MySQL handshake response).
    #[serde(
        default = "default_handshake_timeout",
        with = "crate::duration::serde_duration"
    )]
    pub handshake_timeout: Duration,
    /// An HTTPS connection with no request in flight and no bytes moving is closed after this.
    #[serde(
        default = "default_idle_timeout",
        with = "crate::duration::serde_duration"
    )]
    pub idle_timeout: Duration,
    /// Connections still in their handshake, over all listeners; more are closed at once.
    #[serde(default = "default_max_pending_connections")]
    pub max_pending_connections: usize,
    /// Connections still in their handshake from one client address (IPv6: one /64).
    #[serde(default = "default_max_pending_per_address")]
    pub max_pending_per_address: usize,
    /// Password verifications running at once; 0 means twice the number of CPUs. Logins
    /// beyond it are answered 503 at once.
    #[serde(default)]
    pub max_concurrent_logins: usize,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_pending_connections() -> usize {
    1024
}
fn default_max_pending_per_address() -> usize {
    64
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            max_pending_connections: default_max_pending_connections(),
            max_pending_per_address: default_max_pending_per_address(),
            max_concurrent_logins: 0,
        }
    }
}

/// `log_format:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, with the fields of the event and its spans, for log shippers.
    Json,
}

/// `storage:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Storage {
    /// `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub backend: StorageBackend,
    /// Connection string, for `postgres` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
}

/// Where dbward keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// A SQLite file in `data_dir` (one gateway).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by several gateways.
    Postgres,
}

/// One entry of `databases:`, the flat form of a `db` resource. An entry of Teleport's
/// `db_service.databases` (`name`, `description`, `protocol`, `uri`, `static_labels`,
/// `admin_user`, `tls`) can be pasted as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticDb {
    /// Resource name.
    pub name: String,
    /// `postgres` or `mysql`.
    pub protocol: Protocol,
    /// `host:port`.
    pub uri: String,
    /// Labels roles select on (`static_labels` in Teleport's `db_service.databases`).
    #[serde(
        default,
        alias = "static_labels",
        deserialize_with = "string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// TLS towards the database.
    #[serde(default)]
    pub tls: DbTls,
    /// Provisioning account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_user: Option<AdminUser>,
}

impl StaticDb {
    /// The equivalent `db` resource.
    pub fn to_db(&self) -> Db {
        Db {
            version: "v3".to_string(),
            metadata: Metadata {
                name: self.name.clone(),
                description: self.description.clone(),
                labels: self.labels.clone(),
            },
            spec: DbSpec {
                protocol: self.protocol,
                uri: self.uri.clone(),
                tls: self.tls.clone(),
                admin_user: self.admin_user.clone(),
            },
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`; a relative `data_dir` is taken relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ModelError> {
        let file_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ModelError::File {
            file: file_name.clone(),
            message: err.to_string(),
        })?;
        let mut config = Config::from_yaml(&text, &file_name)?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or_else(|| Path::new(""));
            let joined = base.join(&config.data_dir);
            // `./dbward-data` next to `dbward.yaml` reads better without the `./`.
            config.data_dir = joined
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect::<PathBuf>();
            if config.data_dir.as_os_str().is_empty() {
                config.data_dir = PathBuf::from(".");
            }
        }
        if let Some(audit_file) = config.audit_file.as_mut().filter(|p| p.is_relative()) {
            let base = path.parent().unwrap_or_else(|| Path::new(""));
            *audit_file = base.join(&*audit_file);
        }
        Ok(config)
    }

    /// Parses and checks configuration text; `file_name` is used in error messages.
    pub fn from_yaml(text: &str, file_name: &str) -> Result<Config, ModelError> {
        let docs: Vec<Document<'_>> = source::split_documents(text)
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect();
        let config = match docs.as_slice() {
            [] => Config::default(),
            [doc] => {
                let (config, ignored) = source::decode::<Config>(doc.text, None)
                    .map_err(|err| source::yaml_error(file_name, doc, &err))?;
                if let Some(path) = ignored.first() {
                    let line = source::locate(doc.text, path)
                        .map(|l| doc.file_line(l))
                        .unwrap_or(doc.first_line);
                    return Err(ModelError::UnknownField {
                        file: file_name.to_string(),
                        line,
                        field: path.last_key().to_string(),
                    });
                }
                config
            }
            [_, second, ..] => {
                return Err(ModelError::Parse {
                    file: file_name.to_string(),
                    line: second.first_line,
                    message: "the configuration file must hold a single YAML document".into(),
                })
            }
        };
        config.validate().map_err(|err| ModelError::File {
            file: file_name.to_string(),
            message: err.to_string(),
        })?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ModelError> {
        let subject = "configuration";
        if self.version != "v1" {
            return Err(ModelError::invalid(
                subject,
                format!("unsupported version \"{}\", expected v1", self.version),
            ));
        }
        if self.cert_ttl.is_zero() {
            return Err(ModelError::invalid(subject, "cert_ttl must be positive"));
        }
        if self.public_addr.trim().is_empty() {
            return Err(ModelError::invalid(
                subject,
                "public_addr must not be empty",
            ));
        }
        if self.web_listen_addr.trim().is_empty() {
            return Err(ModelError::invalid(
                subject,
                "web_listen_addr must not be empty",
            ));
        }
        let limits = &self.limits;
        if limits.handshake_timeout.is_zero() || limits.idle_timeout.is_zero() {
            return Err(ModelError::invalid(
                subject,
                "limits.handshake_timeout and limits.idle_timeout must be positive",
            ));
        }
        if limits.max_pending_connections == 0 || limits.max_pending_per_address == 0 {
            return Err(ModelError::invalid(
                subject,
                "limits.max_pending_connections and limits.max_pending_per_address must be positive",
            ));
        }
        // A `dsn` next to `backend: sqlite` is left unused (the documented example has one).
        if self.storage.backend == StorageBackend::Postgres
            && self
                .storage
                .dsn
                .as_deref()
                .map_or(true, |d| d.trim().is_empty())
        {
            return Err(ModelError::invalid(
                subject,
                "storage.dsn is required with storage.backend: postgres",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for db in &self.databases {
            if !seen.insert(db.name.as_str()) {
                return Err(ModelError::invalid(
                    subject,
                    format!("databases: \"{}\" is listed twice", db.name),
                ));
            }
            db.to_db().validate()?;
        }
        Ok(())
    }

    /// The static databases as `db` resources, each validated.
    pub fn static_dbs(&self) -> Result<Vec<Db>, ModelError> {
        self.databases
            .iter()
            .map(|s| {
                let db = s.to_db();
                db.validate()?;
                Ok(db)
            })
            .collect()
    }

    /// `cluster_name`, else the host name, else `dbward`.
    pub fn cluster_name_or_host(&self) -> String {
        if let Some(name) = self.cluster_name.as_ref().filter(|n| !n.trim().is_empty()) {
            return name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "dbward".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TlsMode;

    /// The example of DESIGN §2, verbatim.
    const DESIGN_EXAMPLE: &str = r#"version: v1
cluster_name: local                    # default: the host name
data_dir: ./dbward-data                # CA keys, SQLite store, audit log, admin identity
public_addr: localhost                 # host name put in listener certificates and printed commands
web_listen_addr: 127.0.0.1:3080        # HTTPS API (login, admin, listing); default shown
postgres_listen_addr: 127.0.0.1:3432   # PostgreSQL protocol; default shown; omit key or "" to disable
mysql_listen_addr: 127.0.0.1:3036      # MySQL/MariaDB protocol; default shown
cert_ttl: 12h                          # default lifetime of user certificates (capped by role max_session_ttl)
metrics_listen_addr: 127.0.0.1:3090    # Prometheus /metrics (plain HTTP); omit or "" to disable (default)
log_format: text                       # text (default) | json
storage:
  backend: sqlite                      # default; or: postgres
  dsn: "postgres://dbward@db1:5432/dbward"   # only for backend: postgres
databases:                             # static databases; more can be created at run time (section 4)
  - name: example
    protocol: postgres                 # postgres | mysql   (mysql covers MariaDB and MySQL)
    uri: localhost:5432
    labels: {env: dev}
    tls:
      mode: verify-full                # verify-full (default) | verify-ca | insecure
      ca_cert_file: /path/ca.pem       # default: dbward's own db CA (section 3)
      server_name: db.internal         # default: host part of uri
    admin_user:
      name: teleport-admin
      default_database: teleport       # optional
"#;

    fn config(text: &str) -> Config {
        match Config::from_yaml(text, "dbward.yaml") {
            Ok(c) => c,
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn design_example_parses() {
        let c = config(DESIGN_EXAMPLE);
        assert_eq!(c.cluster_name.as_deref(), Some("local"));
        assert_eq!(c.storage.backend, StorageBackend::Sqlite);
        assert_eq!(c.metrics_listen_addr.as_deref(), Some("127.0.0.1:3090"));
        assert_eq!(c.log_format, LogFormat::Text);
        let c = config(&DESIGN_EXAMPLE.replace("backend: sqlite", "backend: postgres"));
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        assert_eq!(
            c.storage.dsn.as_deref(),
            Some("postgres://dbward@db1:5432/dbward")
        );
        let err = Config::from_yaml("storage: {backend: postgres}\n", "dbward.yaml").unwrap_err();
        assert!(err.to_string().contains("storage.dsn"), "{err}");
        let dbs = c.static_dbs().unwrap();
        assert_eq!(dbs.len(), 1);
        let db = &dbs[0];
        assert_eq!(db.metadata.name, "example");
        assert_eq!(db.metadata.labels["env"], "dev");
        assert_eq!(db.spec.tls.mode, TlsMode::VerifyFull);
        assert_eq!(db.spec.tls.server_name.as_deref(), Some("db.internal"));
        assert_eq!(db.spec.tls.ca_cert_file.as_deref(), Some("/path/ca.pem"));
        assert_eq!(db.admin_user().unwrap().name, "teleport-admin");
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = config("# nothing here\n");
        assert_eq!(c, Config::default());
        assert_eq!(c.version, "v1");
        assert_eq!(c.cluster_name, None);
        assert_eq!(c.data_dir, PathBuf::from("./dbward-data"));
        assert_eq!(c.public_addr, "localhost");
        assert_eq!(c.web_listen_addr, "127.0.0.1:3080");
        assert_eq!(c.postgres_listen_addr.as_deref(), Some("127.0.0.1:3432"));
        assert_eq!(c.mysql_listen_addr.as_deref(), Some("127.0.0.1:3036"));
        assert_eq!(c.cert_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(c.storage.backend, StorageBackend::Sqlite);
        assert!(c.databases.is_empty());
        assert_eq!(c.metrics_listen_addr, None, "metrics are off by default");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn metrics_address_and_json_logs_are_read_and_checked() {
        let c = config("metrics_listen_addr: 127.0.0.1:9090\nlog_format: json\n");
        assert_eq!(c.metrics_listen_addr.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            config("metrics_listen_addr: \"\"\n").metrics_listen_addr,
            None
        );
        let err = Config::from_yaml("log_format: xml\n", "dbward.yaml").unwrap_err();
        assert!(err.to_string().starts_with("dbward.yaml:1: "), "{err}");
    }

    #[test]
    fn empty_listen_address_disables_the_listener() {
        let c =
            config("postgres_listen_addr: \"\"\nmysql_listen_addr: 0.0.0.0:3306\ncert_ttl: 30m\n");
        assert_eq!(c.postgres_listen_addr, None);
        assert_eq!(c.mysql_listen_addr.as_deref(), Some("0.0.0.0:3306"));
        assert_eq!(c.cert_ttl, Duration::from_secs(1800));
    }

    #[test]
    fn unknown_key_is_an_error_naming_key_and_line() {
        let text = "version: v1\ncluster_name: local\ndata_dir: ./d\npublic_addr: localhost\nweb_listen_addr: 127.0.0.1:3080\n# a comment\npostgress_listen_addr: 127.0.0.1:3432\n";
        let err = Config::from_yaml(text, "dbward.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "dbward.yaml:7: unknown field \"postgress_listen_addr\""
        );
    }

    #[test]
    fn unknown_key_inside_a_database_is_located() {
        let text = "databases:\n  - name: a\n    protocol: mysql\n    uri: h:3306\n    admin_user:\n      name: root\n      default_db: x\n";
        let err = Config::from_yaml(text, "dbward.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "dbward.yaml:7: unknown field \"default_db\""
        );
    }

    #[test]
    fn bad_values_name_the_line() {
        let err = Config::from_yaml("storage:\n  backend: mongo\n", "dbward.yaml").unwrap_err();
        assert!(err.to_string().starts_with("dbward.yaml:2: "), "{err}");
        let err = Config::from_yaml("cert_ttl: 12\n", "dbward.yaml").unwrap_err();
        assert!(err.to_string().starts_with("dbward.yaml:1: "), "{err}");
        let err = Config::from_yaml("a: [\n", "dbward.yaml").unwrap_err();
        assert!(err.to_string().starts_with("dbward.yaml:"), "{err}");
    }

    /// The `db_service.databases` entry of the PostgreSQL provisioning guide, verbatim, plus
    /// the `static_labels` and `tls` keys of Teleport's static configuration.
    const GUIDE_STATIC_DATABASES: &str = r#"databases:
  - name: "example"
    protocol: "postgres"
    uri: "localhost:5432"
    admin_user:
      name: "teleport-admin"
      # Optional default database the admin user logs into. Default is
      # the same database that the user is accessing, if not specified.
      # default_database: teleport
  - name: "maria"
    description: "MariaDB"
    protocol: "mysql"
    uri: "localhost:3306"
    static_labels:
      env: "dev"
    admin_user:
      name: "teleport-admin"
      default_database: "teleport"
    tls:
      mode: "verify-ca"
      ca_cert_file: "/etc/teleport/maria-ca.pem"
"#;

    #[test]
    fn teleport_static_databases_can_be_pasted() {
        let c = config(GUIDE_STATIC_DATABASES);
        let dbs = c.static_dbs().unwrap();
        assert_eq!(dbs.len(), 2);
        assert_eq!(dbs[0].metadata.name, "example");
        assert_eq!(dbs[0].spec.protocol, Protocol::Postgres);
        let admin = dbs[0].admin_user().unwrap();
        assert_eq!(admin.name, "teleport-admin");
        assert_eq!(admin.default_database, None);
        assert_eq!(dbs[1].metadata.labels["env"], "dev");
        assert_eq!(dbs[1].metadata.description, "MariaDB");
        assert_eq!(dbs[1].spec.tls.mode, TlsMode::VerifyCa);
        assert_eq!(
            dbs[1].spec.tls.ca_cert_file.as_deref(),
            Some("/etc/teleport/maria-ca.pem")
        );
        assert_eq!(
            dbs[1].admin_user().unwrap().default_database.as_deref(),
            Some("teleport")
        );
    }

    #[test]
    fn limits_have_defaults_and_refuse_unknown_keys() {
        let c = config("# nothing\n");
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_pending_connections, 1024);
        assert_eq!(c.limits.max_pending_per_address, 64);
        assert_eq!(c.limits.max_concurrent_logins, 0);
        let c = config("limits:\n  handshake_timeout: 2s\n  max_pending_per_address: 8\n");
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_pending_per_address, 8);
        let err = Config::from_yaml("limits:\n  idle_timout: 5s\n", "dbward.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "dbward.yaml:2: unknown field \"idle_timout\""
        );
        let err =
            Config::from_yaml("limits: {max_pending_connections: 0}\n", "dbward.yaml").unwrap_err();
        assert!(err.to_string().contains("must be positive"), "{err}");
    }

    #[test]
    fn duplicate_static_database_names_are_refused() {
        let text = "databases:\n  - {name: a, protocol: postgres, uri: h}\n  - {name: a, protocol: mysql, uri: h}\n";
        let err = Config::from_yaml(text, "dbward.yaml").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn load_resolves_a_relative_data_dir_against_the_file() {
        let dir = std::env::temp_dir().join(format!("dbward-model-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dbward.yaml");
        std::fs::write(&path, "data_dir: ./state\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.data_dir, dir.join("state"));
        std::fs::write(&path, "data_dir: ./state\naudit_file: audit.jsonl\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.audit_file, Some(dir.join("audit.jsonl")));
        assert!(c.audit_queries, "statements are audited by default");
        std::fs::write(&path, "audit_queries: false\n").unwrap();
        assert!(!Config::load(&path).unwrap().audit_queries);
        std::fs::write(&path, "data_dir: /var/lib/dbward\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().data_dir,
            PathBuf::from("/var/lib/dbward")
        );
        let missing = Config::load(&dir.join("nope.yaml")).unwrap_err();
        assert!(missing.to_string().contains("nope.yaml"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cluster_name_falls_back_to_a_host_name() {
        let mut c = Config::default();
        assert!(!c.cluster_name_or_host().is_empty());
        c.cluster_name = Some("prod".into());
        assert_eq!(c.cluster_name_or_host(), "prod");
    }
}
