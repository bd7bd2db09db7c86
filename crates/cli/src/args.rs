//! The `dbward` command line: every command, flag and value as the user types it.
//!
//! Only parsing lives here; what each command does is in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Environment variable naming the configuration file when `-c` is absent.
pub const CONFIG_ENV: &str = "DBWARD_CONFIG";
/// The configuration file used when neither `-c` nor `$DBWARD_CONFIG` is given.
pub const DEFAULT_CONFIG_FILE: &str = "dbward.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "dbward",
    version,
    about = "Identity-aware access gateway for PostgreSQL and MariaDB",
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file [default: $DBWARD_CONFIG, then ./dbward.yaml]
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The configuration file to use: `-c`, else `$DBWARD_CONFIG`, else `./dbward.yaml`.
    pub fn config_path(&self) -> PathBuf {
        resolve_config_path(
            self.config.clone(),
            std::env::var_os(CONFIG_ENV).map(PathBuf::from),
        )
    }
}

pub fn resolve_config_path(flag: Option<PathBuf>, env: Option<PathBuf>) -> PathBuf {
    flag.or(env.filter(|p| !p.as_os_str().is_empty()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway
    Start,
    /// One-command sandbox: local databases, an admin user, a sample role and user, and the
    /// gateway in the foreground
    Quickstart {
        /// Directory for the sandbox's files
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Manage dbward users
    #[command(subcommand)]
    Users(UsersCommand),
    /// Create resources from a YAML file (multi-document; `-` reads stdin)
    Create {
        /// File with the resources; `-` for stdin
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
        /// Overwrite resources that already exist
        #[arg(long)]
        force: bool,
    },
    /// Show resources: role(s), user(s), db(s), db_object_import_rule(s), oidc, trusted_cluster(s)
    Get {
        /// KIND or KIND/NAME
        #[arg(value_name = "KIND[/NAME]")]
        target: String,
        #[arg(long, value_enum, default_value_t = ResourceFormat::Text)]
        format: ResourceFormat,
    },
    /// Delete a resource
    Rm {
        #[arg(value_name = "KIND/NAME")]
        target: String,
    },
    /// Certificate authorities: sign database server certificates, export CA certificates
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Log in to a gateway with a password and store a user certificate
    Login(LoginArgs),
    /// Remove the stored certificates and keys
    Logout,
    /// Show the current login
    Status,
    /// Databases: list, log in, show connection settings, connect
    #[command(subcommand)]
    Db(DbCommand),
    /// Local forwarders
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// The audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Second factor: register a TOTP device for yourself
    #[command(subcommand)]
    Mfa(MfaCommand),
    /// Join tokens (root cluster, admin)
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Register a TOTP device (prints its otpauth:// URI and a QR code once)
    Add {
        /// A current code of the device being replaced (needed when you have one)
        #[arg(long, value_name = "CODE")]
        otp: Option<String>,
        /// Read your password from stdin (needed for a first device of a password user)
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a join token; the token is printed alone on the last line
    Add {
        /// Token type: trusted_cluster (a leaf cluster joins this one)
        #[arg(long = "type", value_name = "TYPE")]
        token_type: String,
        /// Lifetime (e.g. 30m, 2h)
        #[arg(long, value_name = "DURATION", default_value = "30m")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user
    Add(UsersAddArgs),
    /// Set a new password for a user (users created from files have none)
    Reset {
        #[arg(value_name = "NAME")]
        name: String,
        /// Read the password from stdin instead of generating one
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct UsersAddArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Roles, comma separated
    #[arg(long, value_name = "ROLE,...", value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// A trait and its values, e.g. `db_roles=reader,writer`; may be repeated
    #[arg(long = "traits", value_name = "KEY=V1,V2")]
    pub traits: Vec<String>,
    /// Read the password from stdin instead of generating one
    #[arg(long)]
    pub password_stdin: bool,
    /// Register a TOTP device and print its otpauth:// URI once
    #[arg(long)]
    pub mfa: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Issue a server certificate for a database, signed by the db CA
    Sign(AuthSignArgs),
    /// Print a CA certificate (PEM)
    Export {
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        ca_type: CaType,
    },
}

#[derive(Debug, Args)]
pub struct AuthSignArgs {
    #[arg(long, value_enum)]
    pub format: SignFormat,
    /// Host names or IP addresses, comma separated
    #[arg(long, value_name = "HOST,...", value_delimiter = ',', required = true)]
    pub host: Vec<String>,
    /// Writes PREFIX.crt, PREFIX.key and PREFIX.cas
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Certificate lifetime
    #[arg(long, default_value = "2160h")]
    pub ttl: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SignFormat {
    Db,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaType {
    Host,
    User,
    Db,
    #[value(name = "db-client")]
    DbClient,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The gateway's web address
    #[arg(long, value_name = "HOST:PORT")]
    pub proxy: String,
    /// Log in with a password as this dbward user
    #[arg(long, value_name = "NAME", required_unless_present = "auth")]
    pub user: Option<String>,
    /// Read the password from stdin instead of prompting
    #[arg(long, conflicts_with = "auth")]
    pub password_stdin: bool,
    /// Log in through this single sign-on connector (`dbward get oidc`) instead of a password
    #[arg(long, value_name = "CONNECTOR", conflicts_with = "user")]
    pub auth: Option<String>,
    /// With --auth: `none` only prints the URL to open; anything else is the browser command
    /// to open it with (by default the system's)
    #[arg(long, value_name = "BROWSER", requires = "auth")]
    pub browser: Option<String>,
    /// Trust only this host CA (from `dbward auth export --type host`)
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Do not verify the gateway's certificate
    #[arg(long)]
    pub insecure: bool,
    /// The current code of your TOTP device (asked for on a terminal when needed)
    #[arg(long, value_name = "CODE", conflicts_with = "auth")]
    pub otp: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// List the databases you may reach
    Ls {
        /// Also show protocol, URI and database roles
        #[arg(short = 'v', long)]
        verbose: bool,
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
        /// A trusted leaf cluster's databases
        #[arg(long, value_name = "LEAF")]
        cluster: Option<String>,
    },
    /// Issue a database certificate for a route
    Login {
        #[arg(value_name = "DB")]
        db: String,
        #[command(flatten)]
        route: RouteArgs,
        /// A fresh TOTP code, for databases whose roles require one per session
        #[arg(long, value_name = "CODE")]
        otp: Option<String>,
        /// A database of a trusted leaf cluster, reached through this gateway
        #[arg(long, value_name = "LEAF")]
        cluster: Option<String>,
    },
    /// Show how to connect to a database you logged in to
    Config {
        #[arg(value_name = "DB")]
        db: String,
        #[arg(long, value_enum, default_value_t = ConfigFormat::Text)]
        format: ConfigFormat,
    },
    /// Log in to the route if needed and run psql or mariadb
    Connect {
        #[arg(value_name = "DB")]
        db: String,
        #[command(flatten)]
        route: RouteArgs,
        /// A fresh TOTP code, for databases whose roles require one per session
        #[arg(long, value_name = "CODE")]
        otp: Option<String>,
        /// A database of a trusted leaf cluster, reached through this gateway
        #[arg(long, value_name = "LEAF")]
        cluster: Option<String>,
        /// Arguments passed to the client after `--`
        #[arg(last = true, value_name = "CLIENT-ARGS")]
        client_args: Vec<String>,
    },
    /// Preflight: connect as the admin user and report missing privileges
    Check {
        #[arg(value_name = "DB")]
        db: String,
        /// A further PostgreSQL database that sessions enter, to check besides the admin's
        /// own and those named in roles' db_names (repeatable)
        #[arg(long = "db-name", value_name = "NAME")]
        db_names: Vec<String>,
    },
}

/// What a database certificate is for: which user, database name and roles.
#[derive(Debug, Clone, Default, Args, PartialEq, Eq)]
pub struct RouteArgs {
    /// Database user (defaults to your dbward user name when users are provisioned)
    #[arg(long, value_name = "U")]
    pub db_user: Option<String>,
    /// Database name
    #[arg(long, value_name = "N")]
    pub db_name: Option<String>,
    /// Database roles to use, comma separated (default: all allowed)
    #[arg(long, value_name = "R1,R2", value_delimiter = ',')]
    pub db_roles: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Local plain-TCP listener that forwards to a database with your certificate
    Db {
        #[arg(value_name = "DB")]
        db: String,
        /// Local port (default: any free port)
        #[arg(long, value_name = "P", default_value_t = 0)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Search audit events
    Search {
        /// Event type, e.g. db.session.start
        #[arg(long = "type", value_name = "T")]
        event_type: Option<String>,
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// How far back to look, e.g. 1h
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResourceFormat {
    Text,
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigFormat {
    Text,
    Json,
    Cmd,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        match Cli::try_parse_from(std::iter::once("dbward").chain(args.iter().copied())) {
            Ok(cli) => cli,
            Err(err) => panic!("{args:?} did not parse: {err}"),
        }
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn users_reset_takes_a_name_and_an_optional_password_from_stdin() {
        let cli = parse(&["users", "reset", "bob", "--password-stdin"]);
        assert!(matches!(
            &cli.command,
            Command::Users(UsersCommand::Reset { name, password_stdin: true }) if name == "bob"
        ));
        let cli = parse(&["users", "reset", "bob"]);
        assert!(matches!(
            &cli.command,
            Command::Users(UsersCommand::Reset {
                password_stdin: false,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["dbward", "users", "reset"]).is_err());
    }

    #[test]
    fn config_flag_is_accepted_before_and_after_subcommand_words() {
        for args in [
            &["-c", "x.yaml", "users", "rm", "bob"][..],
            &["users", "-c", "x.yaml", "rm", "bob"],
            &["users", "rm", "bob", "--config", "x.yaml"],
            &["users", "rm", "--config=x.yaml", "bob"],
        ] {
            let cli = parse(args);
            assert_eq!(cli.config, Some(PathBuf::from("x.yaml")), "{args:?}");
            assert!(
                matches!(&cli.command, Command::Users(UsersCommand::Rm { name }) if name == "bob")
            );
        }
        let cli = parse(&["db", "ls", "-c", "y.yaml", "-v"]);
        assert_eq!(cli.config, Some(PathBuf::from("y.yaml")));
    }

    #[test]
    fn config_path_prefers_flag_then_environment_then_default() {
        let flag = Some(PathBuf::from("flag.yaml"));
        let env = Some(PathBuf::from("env.yaml"));
        assert_eq!(
            resolve_config_path(flag, env.clone()),
            PathBuf::from("flag.yaml")
        );
        assert_eq!(resolve_config_path(None, env), PathBuf::from("env.yaml"));
        assert_eq!(
            resolve_config_path(None, Some(PathBuf::new())),
            PathBuf::from("dbward.yaml")
        );
        assert_eq!(
            resolve_config_path(None, None),
            PathBuf::from("dbward.yaml")
        );
    }

    #[test]
    fn client_args_after_double_dash_pass_through_untouched() {
        let cli = parse(&[
            "db",
            "connect",
            "example",
            "--db-name",
            "app",
            "--",
            "-c",
            "select 1",
            "--db-user",
        ]);
        let Command::Db(DbCommand::Connect {
            db,
            route,
            client_args,
            ..
        }) = cli.command
        else {
            panic!("not db connect");
        };
        assert_eq!(db, "example");
        assert_eq!(route.db_name.as_deref(), Some("app"));
        assert_eq!(route.db_user, None);
        assert_eq!(client_args, ["-c", "select 1", "--db-user"]);
        // `-c` after `--` is the client's flag, not the config file.
        assert_eq!(cli.config, None);
    }

    #[test]
    fn users_add_splits_roles_and_keeps_each_traits_flag() {
        let cli = parse(&[
            "users",
            "add",
            "alice",
            "--roles",
            "a,b",
            "--traits",
            "db_roles=reader,writer",
            "--traits",
            "db_users=app",
            "--password-stdin",
        ]);
        let Command::Users(UsersCommand::Add(add)) = cli.command else {
            panic!("not users add");
        };
        assert_eq!(add.roles, ["a", "b"]);
        assert_eq!(add.traits, ["db_roles=reader,writer", "db_users=app"]);
        assert!(add.password_stdin);
    }

    #[test]
    fn users_add_requires_roles() {
        assert!(Cli::try_parse_from(["dbward", "users", "add", "alice"]).is_err());
    }

    #[test]
    fn login_refuses_ca_together_with_insecure() {
        let both = Cli::try_parse_from([
            "dbward",
            "login",
            "--proxy",
            "h:1",
            "--user",
            "a",
            "--ca",
            "ca.pem",
            "--insecure",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn auth_sign_splits_hosts_and_defaults_ttl() {
        let cli = parse(&[
            "auth",
            "sign",
            "--format",
            "db",
            "--host",
            "localhost,127.0.0.1",
            "--out",
            "/tmp/server",
        ]);
        let Command::Auth(AuthCommand::Sign(sign)) = cli.command else {
            panic!("not auth sign");
        };
        assert_eq!(sign.host, ["localhost", "127.0.0.1"]);
        assert_eq!(sign.ttl, "2160h");
        assert_eq!(sign.out, PathBuf::from("/tmp/server"));
    }

    #[test]
    fn auth_export_accepts_the_four_ca_types_only() {
        let cli = parse(&["auth", "export", "--type", "db-client"]);
        assert!(matches!(
            cli.command,
            Command::Auth(AuthCommand::Export {
                ca_type: CaType::DbClient
            })
        ));
        assert!(Cli::try_parse_from(["dbward", "auth", "export", "--type", "root"]).is_err());
    }

    #[test]
    fn db_roles_flag_splits_on_commas() {
        let cli = parse(&["db", "login", "example", "--db-roles", "reader,writer"]);
        let Command::Db(DbCommand::Login { route, .. }) = cli.command else {
            panic!("not db login");
        };
        assert_eq!(route.db_roles, ["reader", "writer"]);
    }

    #[test]
    fn unknown_format_is_refused() {
        assert!(Cli::try_parse_from(["dbward", "get", "roles", "--format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["dbward", "db", "config", "x", "--format", "cmd"]).is_ok());
    }
}
