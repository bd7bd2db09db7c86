//! What each command does, one module per group: `server` (start, quickstart), `admin`
//! (users, resources, audit, db check), `auth` (CAs), `session` (login, logout, status),
//! `db` (listing, database certificates, connecting) and `proxy` (local forwarders).

mod admin;
mod auth;
mod db;
mod proxy;
mod server;
mod session;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use dbward_model::{Config, LogFormat};

use crate::args::{
    AuditCommand, AuthCommand, Cli, Command, DbCommand, MfaCommand, ProxyCommand, TokensCommand,
    UsersCommand,
};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let config_path = cli.config_path();
    let quiet = !matches!(cli.command, Command::Start | Command::Quickstart { .. });
    if !matches!(cli.command, Command::Start) {
        init_logging(quiet, LogFormat::Text);
    }
    match cli.command {
        Command::Start => {
            let config = load_config(&config_path)?;
            init_logging(false, config.log_format);
            server::start(config).await?
        }
        Command::Quickstart { dir } => server::quickstart(dir).await?,
        Command::Users(UsersCommand::Add(add)) => {
            admin::users_add(&load_config(&config_path)?, add).await?
        }
        Command::Users(UsersCommand::Reset {
            name,
            password_stdin,
        }) => admin::users_reset(&load_config(&config_path)?, &name, password_stdin).await?,
        Command::Users(UsersCommand::Rm { name }) => {
            admin::users_rm(&load_config(&config_path)?, &name).await?
        }
        Command::Create { file, force } => {
            admin::create(&load_config(&config_path)?, &file, force).await?
        }
        Command::Get { target, format } => {
            admin::get(&load_config(&config_path)?, &target, format).await?
        }
        Command::Rm { target } => admin::rm(&load_config(&config_path)?, &target).await?,
        Command::Auth(AuthCommand::Sign(sign)) => {
            auth::sign(&load_config(&config_path)?, sign).await?
        }
        Command::Auth(AuthCommand::Export { ca_type }) => {
            auth::export(&load_config(&config_path)?, ca_type).await?
        }
        Command::Login(login) => session::login(login).await?,
        Command::Logout => session::logout()?,
        Command::Status => session::status()?,
        Command::Db(DbCommand::Ls {
            verbose,
            format,
            cluster,
        }) => db::ls(verbose, format, cluster.as_deref()).await?,
        Command::Db(DbCommand::Login {
            db,
            route,
            otp,
            cluster,
        }) => db::login(&db, &route, otp, cluster.as_deref()).await?,
        Command::Db(DbCommand::Config { db, format }) => db::config(&db, format)?,
        Command::Db(DbCommand::Connect {
            db,
            route,
            otp,
            cluster,
            client_args,
        }) => db::connect(&db, &route, otp, cluster.as_deref(), &client_args).await?,
        Command::Tokens(TokensCommand::Add { token_type, ttl }) => {
            admin::tokens_add(&load_config(&config_path)?, &token_type, &ttl).await?
        }
        Command::Db(DbCommand::Check { db, db_names }) => {
            return admin::db_check(&load_config(&config_path)?, &db, &db_names).await
        }
        Command::Proxy(ProxyCommand::Db { db, port }) => proxy::db(&db, port).await?,
        Command::Mfa(MfaCommand::Add {
            otp,
            password_stdin,
        }) => session::mfa_add(otp, password_stdin).await?,
        Command::Audit(AuditCommand::Search {
            event_type,
            user,
            since,
            format,
        }) => {
            admin::audit_search(&load_config(&config_path)?, event_type, user, since, format)
                .await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: &Path) -> Result<Config> {
    if !path.exists() {
        anyhow::bail!(
            "configuration file {} not found; pass -c FILE or set $DBWARD_CONFIG",
            path.display()
        );
    }
    Config::load(path).with_context(|| format!("loading {}", path.display()))
}

/// The gateway logs at `info`; client commands only show warnings. `RUST_LOG` overrides both.
/// `log_format: json` writes one JSON object a line, with the fields of the current spans.
fn init_logging(quiet: bool, format: LogFormat) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A time for people: `2025-01-31 17:04:05 UTC`, from RFC 3339.
pub(crate) fn display_time(rfc3339: &str) -> String {
    match time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => rfc3339.to_string(),
    }
}

/// Whether an RFC 3339 time is in the past (unparsable counts as expired).
pub(crate) fn is_expired(rfc3339: &str) -> bool {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t <= time::OffsetDateTime::now_utc())
        .unwrap_or(true)
}

/// `3h12m left` or `expired`.
pub(crate) fn remaining(rfc3339: &str) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return "unknown".to_string();
    };
    let left = t - time::OffsetDateTime::now_utc();
    if left <= time::Duration::ZERO {
        return "expired".to_string();
    }
    let secs = left.whole_seconds().max(0) as u64;
    let rounded = std::time::Duration::from_secs(if secs >= 60 { secs / 60 * 60 } else { secs });
    format!("{} left", dbward_model::format_duration(rounded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc_and_expiry_is_judged_against_now() {
        assert_eq!(
            display_time("2030-01-02T03:04:05+01:00"),
            "2030-01-02 02:04:05 UTC"
        );
        assert!(!is_expired("2999-01-01T00:00:00Z"));
        assert!(is_expired("2000-01-01T00:00:00Z"));
        assert!(is_expired("garbage"));
        assert_eq!(remaining("2000-01-01T00:00:00Z"), "expired");
        assert!(remaining("2999-01-01T00:00:00Z").ends_with(" left"));
    }
}
