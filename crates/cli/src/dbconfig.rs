//! How to reach a database through the gateway with a database certificate: the settings
//! `dbward db config` prints, and the psql / mariadb command lines `dbward db connect` runs.

use serde::Serialize;

use crate::home::{ClientHome, DbRouteState};

/// Connection settings of one route. The JSON keys are part of the command-line contract.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DbConnectionConfig {
    pub name: String,
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Empty when the route names no database (the client's default applies).
    pub database: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// A ready command line, quoted for a POSIX shell.
    pub command: String,
}

/// Which client program a protocol uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProgram {
    Psql,
    Mariadb,
}

impl ClientProgram {
    pub fn for_protocol(protocol: &str) -> Option<Self> {
        match protocol {
            "postgres" => Some(Self::Psql),
            "mysql" => Some(Self::Mariadb),
            _ => None,
        }
    }
    pub fn program(self) -> &'static str {
        match self {
            Self::Psql => "psql",
            Self::Mariadb => "mariadb",
        }
    }
}

impl DbConnectionConfig {
    pub fn new(home: &ClientHome, route: &DbRouteState) -> anyhow::Result<Self> {
        let files = home.db(&route.db)?;
        let mut config = Self {
            name: route.db.clone(),
            protocol: route.protocol.clone(),
            host: route.gateway_host.clone(),
            port: route.gateway_port,
            user: route.db_user.clone(),
            database: route.db_name.clone().unwrap_or_default(),
            ca: home.host_ca().display().to_string(),
            cert: files.cert().display().to_string(),
            key: files.key().display().to_string(),
            command: String::new(),
        };
        config.command = config.shell_command();
        Ok(config)
    }

    /// The client program and its arguments (before any CLIENT-ARGS).
    pub fn client_argv(&self) -> anyhow::Result<(ClientProgram, Vec<String>)> {
        let program = ClientProgram::for_protocol(&self.protocol).ok_or_else(|| {
            anyhow::anyhow!("no client program known for protocol {:?}", self.protocol)
        })?;
        let args = match program {
            ClientProgram::Psql => {
                let mut pairs = vec![
                    ("host", self.host.clone()),
                    ("port", self.port.to_string()),
                    ("sslmode", "verify-full".to_string()),
                    ("sslrootcert", self.ca.clone()),
                    ("sslcert", self.cert.clone()),
                    ("sslkey", self.key.clone()),
                    ("user", self.user.clone()),
                ];
                if !self.database.is_empty() {
                    pairs.push(("dbname", self.database.clone()));
                }
                let conninfo: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
                    .collect();
                vec![conninfo.join(" ")]
            }
            ClientProgram::Mariadb => {
                // The mariadb client takes "localhost" to mean its Unix socket; the gateway is
                // only reachable over TCP, and its certificate names 127.0.0.1 too.
                let host = if self.host == "localhost" {
                    "127.0.0.1"
                } else {
                    self.host.as_str()
                };
                let mut args = vec![
                    format!("--host={host}"),
                    format!("--port={}", self.port),
                    format!("--ssl-ca={}", self.ca),
                    format!("--ssl-cert={}", self.cert),
                    format!("--ssl-key={}", self.key),
                    "--ssl-verify-server-cert".to_string(),
                    format!("--user={}", self.user),
                ];
                if !self.database.is_empty() {
                    args.push(format!("--database={}", self.database));
                }
                args
            }
        };
        Ok((program, args))
    }

    /// The command line as a user would type it in a POSIX shell.
    pub fn shell_command(&self) -> String {
        match self.client_argv() {
            Ok((program, args)) => std::iter::once(program.program().to_string())
                .chain(args.iter().map(|a| match program {
                    // The familiar form: the whole conninfo in double quotes.
                    ClientProgram::Psql => double_quote(a),
                    ClientProgram::Mariadb => shell_quote(a),
                }))
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => String::new(),
        }
    }

    pub fn to_text(&self) -> String {
        let mut rows = vec![
            ("Name", self.name.as_str()),
            ("Protocol", self.protocol.as_str()),
            ("Host", self.host.as_str()),
        ];
        let port = self.port.to_string();
        rows.push(("Port", &port));
        rows.push(("User", &self.user));
        if !self.database.is_empty() {
            rows.push(("Database", &self.database));
        }
        rows.push(("CA", &self.ca));
        rows.push(("Cert", &self.cert));
        rows.push(("Key", &self.key));
        let mut out = String::new();
        for (label, value) in rows {
            out.push_str(&format!("{:<10}{value}\n", format!("{label}:")));
        }
        out.push_str(&format!("\nConnect with:\n  {}\n", self.command));
        out
    }
}

/// A libpq connection-string value: quoted when empty or holding spaces, quotes or backslashes.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    let escaped = v.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

fn double_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes for a POSIX shell only when needed.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn route(protocol: &str, db_name: Option<&str>) -> DbRouteState {
        DbRouteState {
            db: "example".into(),
            protocol: protocol.into(),
            db_user: "alice".into(),
            db_name: db_name.map(String::from),
            db_roles: vec![],
            gateway_host: "localhost".into(),
            gateway_port: 3432,
            expires: "2030-01-01T00:00:00Z".into(),
            cluster: None,
        }
    }

    #[test]
    fn json_has_exactly_the_contract_keys() -> anyhow::Result<()> {
        let home = ClientHome::at(PathBuf::from("/h"));
        let config = DbConnectionConfig::new(&home, &route("postgres", Some("postgres")))?;
        let value = serde_json::to_value(&config)?;
        let keys: Vec<&str> = value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut expected = [
            "name", "protocol", "host", "port", "user", "database", "ca", "cert", "key", "command",
        ];
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
        assert_eq!(value["port"], 3432);
        assert_eq!(value["ca"], "/h/host-ca.pem");
        assert_eq!(value["cert"], "/h/db/example/cert.pem");
        assert_eq!(value["key"], "/h/db/example/key.pem");
        Ok(())
    }

    #[test]
    fn psql_command_uses_verify_full_and_the_route_files() -> anyhow::Result<()> {
        let home = ClientHome::at(PathBuf::from("/h"));
        let config = DbConnectionConfig::new(&home, &route("postgres", Some("postgres")))?;
        assert_eq!(
            config.command,
            "psql \"host=localhost port=3432 sslmode=verify-full sslrootcert=/h/host-ca.pem \
             sslcert=/h/db/example/cert.pem sslkey=/h/db/example/key.pem user=alice dbname=postgres\""
        );
        let (program, args) = config.client_argv()?;
        assert_eq!(program, ClientProgram::Psql);
        assert_eq!(args.len(), 1);
        Ok(())
    }

    #[test]
    fn psql_conninfo_quotes_paths_with_spaces() -> anyhow::Result<()> {
        let home = ClientHome::at(PathBuf::from("/my home"));
        let config = DbConnectionConfig::new(&home, &route("postgres", None))?;
        let (_, args) = config.client_argv()?;
        assert!(
            args[0].contains("sslrootcert='/my home/host-ca.pem'"),
            "{}",
            args[0]
        );
        assert!(!args[0].contains("dbname"));
        Ok(())
    }

    #[test]
    fn mariadb_command_verifies_the_server_and_avoids_the_unix_socket() -> anyhow::Result<()> {
        let home = ClientHome::at(PathBuf::from("/h"));
        let config = DbConnectionConfig::new(&home, &route("mysql", Some("app")))?;
        assert_eq!(
            config.command,
            "mariadb --host=127.0.0.1 --port=3432 --ssl-ca=/h/host-ca.pem \
             --ssl-cert=/h/db/example/cert.pem --ssl-key=/h/db/example/key.pem \
             --ssl-verify-server-cert --user=alice --database=app"
        );
        Ok(())
    }

    #[test]
    fn shell_quote_leaves_plain_words_alone() {
        assert_eq!(shell_quote("--user=alice"), "--user=alice");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
