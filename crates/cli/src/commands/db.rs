//! `dbward db ls|login|config|connect`: the databases a user may reach and the per-database
//! certificates that lead to them.

use anyhow::{bail, Context, Result};
use dbward_server::api::{DbCertRequest, DbCertResponse, DbListEntry, DbListResponse};

use crate::args::{ConfigFormat, ListFormat, RouteArgs};
use crate::commands::admin::format_labels;
use crate::commands::session::{code_hint, needs_code, user_client};
use crate::commands::{display_time, is_expired};
use crate::dbconfig::DbConnectionConfig;
use crate::home::{ClientHome, DbRouteState};
use crate::prompt;
use crate::table::Table;

pub async fn ls(verbose: bool, format: ListFormat, cluster: Option<&str>) -> Result<()> {
    let home = ClientHome::from_env()?;
    let (_, client) = user_client(&home)?;
    let path = match cluster {
        Some(leaf) => format!("/v1/dbs?cluster={}", crate::client::encode_component(leaf)),
        None => "/v1/dbs".to_string(),
    };
    let response: DbListResponse = client.get(&path).await?;
    match format {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&response.databases)?),
        ListFormat::Text => print!("{}", render_db_list(&response.databases, verbose)),
    }
    Ok(())
}

pub fn render_db_list(dbs: &[DbListEntry], verbose: bool) -> String {
    let headers: &[&str] = if verbose {
        &[
            "Name",
            "Description",
            "Protocol",
            "URI",
            "Allowed Users",
            "Database Roles",
            "Database Permissions",
            "Labels",
        ]
    } else {
        &["Name", "Description", "Allowed Users", "Labels"]
    };
    let mut table = Table::new(headers.iter().copied());
    for db in dbs {
        let labels = format_labels(db.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if verbose {
            table.push([
                db.name.clone(),
                db.description.clone(),
                db.protocol.clone(),
                db.uri.clone(),
                db.allowed_users.clone(),
                db.db_roles.join(","),
                db.db_permissions.join("; "),
                labels,
            ]);
        } else {
            table.push([
                db.name.clone(),
                db.description.clone(),
                db.allowed_users.clone(),
                labels,
            ]);
        }
    }
    table.render()
}

/// Issues a database certificate for the route (fresh key, kept locally) and stores it.
async fn issue(
    home: &ClientHome,
    db: &str,
    route: &RouteArgs,
    otp: Option<String>,
    cluster: Option<&str>,
) -> Result<(DbRouteState, Vec<String>)> {
    let files = home.db(db)?;
    let (profile, client) = user_client(home)?;
    let (key_pem, csr_pem) = dbward_pki::new_key_and_csr(&profile.user)?;
    let mut request = DbCertRequest {
        db: db.to_string(),
        db_user: route.db_user.clone(),
        db_name: route.db_name.clone(),
        db_roles: route.db_roles.clone(),
        csr_pem,
        otp,
        cluster: cluster.map(str::to_string),
    };
    let mut answer = client.post("/v1/db-certs", &request).await;
    // require_session_mfa: a fresh code for this database login.
    if request.otp.is_none() && needs_code(&answer) && prompt::can_prompt_code() {
        request.otp = Some(prompt::prompt_code(&format!(
            "One-time code for database \"{db}\": "
        ))?);
        answer = client.post("/v1/db-certs", &request).await;
    }
    let response: DbCertResponse =
        code_hint(answer).with_context(|| format!("database login to \"{db}\" failed"))?;
    let state = DbRouteState {
        db: db.to_string(),
        protocol: response.protocol,
        db_user: response.db_user,
        db_name: response.db_name,
        db_roles: route.db_roles.clone(),
        gateway_host: response.gateway_host,
        gateway_port: response.gateway_port,
        expires: response.expires,
        cluster: cluster.map(str::to_string),
    };
    // The host CA may have been rotated since login; the db clients verify with this file.
    std::fs::write(home.host_ca(), &response.host_ca_pem)
        .with_context(|| format!("writing {}", home.host_ca().display()))?;
    files.save(&state, &response.cert_pem, &key_pem)?;
    Ok((state, response.db_permissions))
}

pub async fn login(
    db: &str,
    route: &RouteArgs,
    otp: Option<String>,
    cluster: Option<&str>,
) -> Result<()> {
    let home = ClientHome::from_env()?;
    let (state, permissions) = issue(&home, db, route, otp, cluster).await?;
    let config = DbConnectionConfig::new(&home, &state)?;
    println!(
        "Logged in to database \"{db}\" as db user \"{}\", valid until {}.",
        state.db_user,
        display_time(&state.expires)
    );
    if !permissions.is_empty() {
        println!("Table permissions granted for the session:");
        for line in &permissions {
            println!("  {line}");
        }
    }
    println!(
        "\nConnect with:\n  dbward db connect {db}\nor:\n  {}",
        config.command
    );
    Ok(())
}

fn stored_route(home: &ClientHome, db: &str) -> Result<DbRouteState> {
    match home.db(db)?.load_route()? {
        Some(route) => Ok(route),
        None => bail!("not logged in to database \"{db}\"; run `dbward db login {db}`"),
    }
}

pub fn config(db: &str, format: ConfigFormat) -> Result<()> {
    let home = ClientHome::from_env()?;
    let route = stored_route(&home, db)?;
    let config = DbConnectionConfig::new(&home, &route)?;
    match format {
        ConfigFormat::Json => println!("{}", serde_json::to_string_pretty(&config)?),
        ConfigFormat::Cmd => println!("{}", config.command),
        ConfigFormat::Text => print!("{}", config.to_text()),
    }
    if is_expired(&route.expires) {
        eprintln!("warning: the certificate for \"{db}\" has expired; run `dbward db login {db}`");
    }
    Ok(())
}

/// Whether a stored route can serve a `db connect` with these flags without a new
/// certificate: not expired, and every flag given matches what the route was issued for.
pub fn route_satisfies(route: &DbRouteState, wanted: &RouteArgs) -> bool {
    let user_matches = match &wanted.db_user {
        Some(user) => *user == route.db_user,
        None => true,
    };
    let name_matches = match &wanted.db_name {
        Some(name) => Some(name) == route.db_name.as_ref(),
        None => true,
    };
    let roles_match = wanted.db_roles.is_empty() || wanted.db_roles == route.db_roles;
    !is_expired(&route.expires) && user_matches && name_matches && roles_match
}

pub async fn connect(
    db: &str,
    route: &RouteArgs,
    otp: Option<String>,
    cluster: Option<&str>,
    client_args: &[String],
) -> Result<()> {
    let home = ClientHome::from_env()?;
    let state = match home.db(db)?.load_route()? {
        // A code given means a new certificate is wanted (the stored one may be a minute old).
        Some(existing)
            if otp.is_none() && cluster.is_none() && route_satisfies(&existing, route) =>
        {
            existing
        }
        // A route of a leaf's database stays there when it is renewed.
        Some(existing) if cluster.is_none() => {
            issue(&home, db, route, otp, existing.cluster.as_deref())
                .await?
                .0
        }
        _ => issue(&home, db, route, otp, cluster).await?.0,
    };
    let config = DbConnectionConfig::new(&home, &state)?;
    let (program, mut args) = config.client_argv()?;
    args.extend(client_args.iter().cloned());
    exec(program.program(), &args)
}

/// Replaces this process with the database client, so signals and the terminal go to it.
fn exec(program: &str, args: &[String]) -> Result<()> {
    let mut command = std::process::Command::new(program);
    command.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = command.exec();
        if err.kind() == std::io::ErrorKind::NotFound {
            bail!("{program} not found; install it or use `dbward db config` with another client");
        }
        Err(err).with_context(|| format!("running {program}"))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("running {program}"))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry() -> DbListEntry {
        DbListEntry {
            name: "example".into(),
            description: "main".into(),
            protocol: "postgres".into(),
            uri: "localhost:5432".into(),
            labels: BTreeMap::from([
                ("env".to_string(), "dev".to_string()),
                ("a".to_string(), "b".to_string()),
            ]),
            allowed_users: "[alice] (Auto-provisioned)".into(),
            db_roles: vec!["reader".into(), "writer".into()],
            auto_provisioning: true,
            db_permissions: vec![
                "SELECT on object_kind=table, schema=public".into(),
                "deny * on name=secrets".into(),
            ],
        }
    }

    #[test]
    fn db_list_has_the_contract_columns() {
        let text = render_db_list(&[entry()], false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Name    Description Allowed Users              Labels"
        );
        assert_eq!(
            lines[2],
            "example main        [alice] (Auto-provisioned) a=b,env=dev"
        );
    }

    #[test]
    fn verbose_db_list_adds_protocol_uri_and_roles() {
        let text = render_db_list(&[entry()], true);
        let header: Vec<&str> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split("  ")
            .collect();
        let header = header.join(" ");
        for column in [
            "Name",
            "Description",
            "Protocol",
            "URI",
            "Allowed Users",
            "Database Roles",
            "Database Permissions",
            "Labels",
        ] {
            assert!(header.contains(column), "{column} missing in {header}");
        }
        assert!(text.contains("postgres localhost:5432"));
        assert!(text.contains("reader,writer"));
        assert!(text.contains("SELECT on object_kind=table, schema=public; deny * on name=secrets"));
        assert!(!render_db_list(&[entry()], false).contains("SELECT"));
    }

    fn state(expires: &str) -> DbRouteState {
        DbRouteState {
            db: "example".into(),
            protocol: "postgres".into(),
            db_user: "alice".into(),
            db_name: Some("app".into()),
            db_roles: vec!["reader".into()],
            gateway_host: "localhost".into(),
            gateway_port: 3432,
            expires: expires.into(),
            cluster: None,
        }
    }

    #[test]
    fn stored_route_is_reused_only_when_valid_and_matching() {
        let valid = state("2999-01-01T00:00:00Z");
        assert!(route_satisfies(&valid, &RouteArgs::default()));
        let same = RouteArgs {
            db_user: Some("alice".into()),
            db_name: Some("app".into()),
            db_roles: vec!["reader".into()],
        };
        assert!(route_satisfies(&valid, &same));
        let other_user = RouteArgs {
            db_user: Some("bob".into()),
            ..RouteArgs::default()
        };
        assert!(!route_satisfies(&valid, &other_user));
        let other_roles = RouteArgs {
            db_roles: vec!["writer".into()],
            ..RouteArgs::default()
        };
        assert!(!route_satisfies(&valid, &other_roles));
        assert!(!route_satisfies(
            &state("2000-01-01T00:00:00Z"),
            &RouteArgs::default()
        ));
    }
}
