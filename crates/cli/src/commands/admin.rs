//! Admin commands (`users`, `create`, `get`, `rm`, `audit search`, `db check`). They reach the
//! gateway that runs with the same configuration through the admin identity `dbward start`
//! keeps in `data_dir`.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use dbward_model::Config;
use dbward_server::api::{
    AddUserRequest, AddUserResponse, AuditSearchResponse, CreateResourcesRequest,
    CreateResourcesResponse, DbCheckResponse, ResetPasswordRequest, ResourceList,
};
use dbward_server::{AdminFiles, Endpoints};
use serde_json::Value;

use crate::args::{ListFormat, ResourceFormat, UsersAddArgs};
use crate::client::{encode_component, ApiClient, ClientCert, Trust};
use crate::prompt;
use crate::table::Table;

/// A client authenticated with the admin identity, for the gateway running on `data_dir`.
pub fn admin_client(config: &Config) -> Result<ApiClient> {
    let files = AdminFiles::new(&config.data_dir);
    let not_running = || {
        format!(
            "no running gateway found for data_dir {}; start one with `dbward start -c FILE`",
            config.data_dir.display()
        )
    };
    let endpoints = std::fs::read_to_string(files.endpoints()).with_context(not_running)?;
    let endpoints: Endpoints = serde_json::from_str(&endpoints)
        .with_context(|| format!("{} is damaged", files.endpoints().display()))?;
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the admin identity {} (admin commands must run as the user that runs `dbward start`)",
                path.display()
            )
        })
    };
    let client = ApiClient::new(
        &endpoints.web,
        Trust::Ca(read(files.host_ca())?),
        Some(ClientCert {
            cert_pem: read(files.cert())?,
            key_pem: read(files.key())?,
        }),
    )?;
    Ok(client)
}

pub async fn users_add(config: &Config, add: UsersAddArgs) -> Result<()> {
    let traits = parse_traits(&add.traits)?;
    let password = if add.password_stdin {
        Some(prompt::password_from_stdin()?)
    } else {
        None
    };
    let client = admin_client(config)?;
    let request = AddUserRequest {
        name: add.name.clone(),
        roles: add.roles.into_iter().filter(|r| !r.is_empty()).collect(),
        traits,
        password,
        mfa: add.mfa,
    };
    let response: AddUserResponse = client.post("/v1/users", &request).await?;
    println!("User \"{}\" has been created.", response.name);
    if let Some(password) = response.generated_password {
        println!("Password (shown only once): {password}");
    }
    if let Some(uri) = response.otpauth_uri {
        println!("MFA device registered. Add it to an authenticator app (shown only once):");
        crate::qr::print_otpauth(&uri);
    }
    Ok(())
}

/// `--traits key=v1,v2` flags into a map; a key given twice collects the values of both.
pub fn parse_traits(flags: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
    let mut traits: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for flag in flags {
        let Some((key, values)) = flag.split_once('=') else {
            bail!("--traits {flag:?}: expected KEY=VALUE[,VALUE...]");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--traits {flag:?}: the trait name is empty");
        }
        let entry = traits.entry(key.to_string()).or_default();
        for value in values.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            if !entry.iter().any(|v| v == value) {
                entry.push(value.to_string());
            }
        }
    }
    Ok(traits)
}

/// `dbward users reset NAME [--password-stdin]`: prints a generated password once unless one
/// is read from stdin.
pub async fn users_reset(config: &Config, name: &str, password_stdin: bool) -> Result<()> {
    let password = if password_stdin {
        Some(prompt::password_from_stdin()?)
    } else {
        None
    };
    let client = admin_client(config)?;
    let response: AddUserResponse = client
        .post(
            &format!("/v1/users/{}/password", encode_component(name)),
            &ResetPasswordRequest { password },
        )
        .await?;
    println!("The password of user \"{}\" has been reset.", response.name);
    if let Some(password) = response.generated_password {
        println!("Password (shown only once): {password}");
    }
    Ok(())
}

pub async fn users_rm(config: &Config, name: &str) -> Result<()> {
    let client = admin_client(config)?;
    client
        .delete(&format!("/v1/users/{}", encode_component(name)))
        .await?;
    println!("User \"{name}\" has been deleted.");
    Ok(())
}

/// `dbward tokens add --type trusted_cluster [--ttl 30m]`: the token alone on the last line.
pub async fn tokens_add(config: &Config, token_type: &str, ttl: &str) -> Result<()> {
    let ttl = dbward_model::parse_duration(ttl).with_context(|| format!("--ttl {ttl}"))?;
    let client = admin_client(config)?;
    let response: dbward_server::api::AddTokenResponse = client
        .post(
            "/v1/tokens",
            &dbward_server::api::AddTokenRequest {
                token_type: token_type.to_string(),
                ttl_secs: ttl.as_secs(),
            },
        )
        .await?;
    println!(
        "The join token below is valid until {} and can be used once. On the leaf cluster, put it\n\
         in a trusted_cluster resource (spec.token) and run `dbward create -f FILE` there.",
        response.expires
    );
    println!("{}", response.token);
    Ok(())
}

pub async fn create(config: &Config, file: &str, force: bool) -> Result<()> {
    let (file_name, text) = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading resources from stdin")?;
        ("stdin".to_string(), text)
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        (file.to_string(), text)
    };
    let client = admin_client(config)?;
    let response: CreateResourcesResponse = client
        .post(
            "/v1/resources",
            &CreateResourcesRequest {
                file_name,
                text,
                force,
            },
        )
        .await?;
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    let verb = if force { "written" } else { "created" };
    for created in &response.created {
        println!("{created} {verb}");
    }
    Ok(())
}

/// `KIND` or `KIND/NAME`.
fn split_target(target: &str, need_name: bool) -> Result<(&str, Option<&str>)> {
    match target.split_once('/') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((kind, Some(name)))
        }
        None if !need_name && !target.is_empty() => Ok((target, None)),
        _ if need_name => bail!("expected KIND/NAME, e.g. role/reader; got {target:?}"),
        _ => bail!("expected KIND or KIND/NAME, e.g. roles or role/reader; got {target:?}"),
    }
}

pub async fn get(config: &Config, target: &str, format: ResourceFormat) -> Result<()> {
    let (kind, name) = split_target(target, false)?;
    let client = admin_client(config)?;
    let path = match name {
        Some(name) => format!(
            "/v1/resources/{}/{}",
            encode_component(kind),
            encode_component(name)
        ),
        None => format!("/v1/resources/{}", encode_component(kind)),
    };
    let list: ResourceList = client.get(&path).await?;
    print!("{}", render_resources(&list.resources, format)?);
    Ok(())
}

/// Resources as a table, as multi-document YAML that `dbward create -f` reads back, or as a
/// JSON array.
pub fn render_resources(resources: &[Value], format: ResourceFormat) -> Result<String> {
    Ok(match format {
        ResourceFormat::Json => serde_json::to_string_pretty(resources)? + "\n",
        ResourceFormat::Yaml => {
            let mut out = String::new();
            for (i, r) in resources.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&serde_yaml_ng::to_string(r)?);
            }
            out
        }
        ResourceFormat::Text => {
            let mut table = Table::new(["Kind", "Name", "Summary"]);
            for r in resources {
                table.push([
                    str_at(r, &["kind"]),
                    str_at(r, &["metadata", "name"]),
                    summary(r),
                ]);
            }
            table.render()
        }
    })
}

fn str_at(value: &Value, path: &[&str]) -> String {
    let mut v = value;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// One line about a resource: what a person scanning the list wants to see first.
fn summary(r: &Value) -> String {
    let mut parts = Vec::new();
    let mut add = |label: &str, value: String| {
        if !value.is_empty() {
            parts.push(format!("{label}={value}"));
        }
    };
    match str_at(r, &["kind"]).as_str() {
        "user" => {
            add("roles", str_at(r, &["spec", "roles"]));
            add(
                "created_by",
                str_at(r, &["metadata", "labels", "dbward.dev/created-by"]),
            );
        }
        "oidc" => {
            add("issuer_url", str_at(r, &["spec", "issuer_url"]));
            add("client_id", str_at(r, &["spec", "client_id"]));
        }
        "role" => {
            add(
                "create_db_user_mode",
                str_at(r, &["spec", "options", "create_db_user_mode"]),
            );
            add("db_roles", str_at(r, &["spec", "allow", "db_roles"]));
        }
        "db" => {
            add("protocol", str_at(r, &["spec", "protocol"]));
            add("uri", str_at(r, &["spec", "uri"]));
            if let Some(Value::Object(labels)) = r.get("metadata").and_then(|m| m.get("labels")) {
                add(
                    "labels",
                    format_labels(
                        labels
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())),
                    ),
                );
            }
        }
        "trusted_cluster" => {
            add("enabled", str_at(r, &["spec", "enabled"]));
            add("web_proxy_addr", str_at(r, &["spec", "web_proxy_addr"]));
        }
        _ => {}
    }
    parts.join(" ")
}

/// `k=v,k2=v2`.
pub fn format_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn rm(config: &Config, target: &str) -> Result<()> {
    let (kind, name) = split_target(target, true)?;
    let name = name.unwrap_or_default();
    let client = admin_client(config)?;
    client
        .delete(&format!(
            "/v1/resources/{}/{}",
            encode_component(kind),
            encode_component(name)
        ))
        .await?;
    println!("{kind}/{name} has been deleted.");
    Ok(())
}

pub async fn audit_search(
    config: &Config,
    event_type: Option<String>,
    user: Option<String>,
    since: Option<String>,
    format: ListFormat,
) -> Result<()> {
    let mut query = Vec::new();
    if let Some(t) = &event_type {
        query.push(format!("event_type={}", encode_component(t)));
    }
    if let Some(u) = &user {
        query.push(format!("user={}", encode_component(u)));
    }
    if let Some(since) = &since {
        let d = dbward_model::parse_duration(since).with_context(|| format!("--since {since}"))?;
        query.push(format!("since_secs={}", d.as_secs()));
    }
    let mut path = "/v1/audit".to_string();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let client = admin_client(config)?;
    let response: AuditSearchResponse = client.get(&path).await?;
    match format {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&response.events)?),
        ListFormat::Text => print!("{}", render_audit(&response.events)),
    }
    Ok(())
}

fn render_audit(events: &[Value]) -> String {
    let mut table = Table::new(["Time", "Event", "User", "Database", "DB User", "Details"]);
    for e in events {
        let mut details = Vec::new();
        if let Some(success) = e.get("success").and_then(Value::as_bool) {
            details.push(if success { "success" } else { "failed" }.to_string());
        }
        for key in ["error", "db_query"] {
            let v = str_at(e, &[key]);
            if !v.is_empty() {
                details.push(v);
            }
        }
        if e.get("delete").and_then(Value::as_bool) == Some(true) {
            details.push("dropped".to_string());
        }
        let db_name = str_at(e, &["db_name"]);
        let mut database = str_at(e, &["db_service"]);
        if !db_name.is_empty() {
            database = format!("{database} ({db_name})");
        }
        table.push([
            str_at(e, &["time"]),
            str_at(e, &["event"]),
            str_at(e, &["user"]),
            database,
            str_at(e, &["db_user"]),
            details.join(" "),
        ]);
    }
    table.render()
}

/// Prints every finding; a database with missing privileges makes the exit status 1.
pub async fn db_check(config: &Config, db: &str, db_names: &[String]) -> Result<ExitCode> {
    let client = admin_client(config)?;
    let mut path = format!("/v1/dbs/{}/check", encode_component(db));
    if !db_names.is_empty() {
        path.push_str("?db_names=");
        path.push_str(&encode_component(&db_names.join(",")));
    }
    let response: DbCheckResponse = client.get(&path).await?;
    if response.findings.is_empty() {
        println!("Database \"{db}\": the admin user has every privilege dbward needs.");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Database \"{db}\": {} problem(s) found.\n",
        response.findings.len()
    );
    for finding in &response.findings {
        println!("- {}", finding.problem);
        if !finding.fix.is_empty() {
            println!("  fix: {}", finding.fix);
        }
    }
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn traits_merge_repeated_keys_and_drop_empty_values() -> Result<()> {
        let flags = vec![
            "db_roles=reader,writer".to_string(),
            "db_users=app".to_string(),
            "db_roles=writer,admin,".to_string(),
        ];
        let traits = parse_traits(&flags)?;
        assert_eq!(traits["db_roles"], ["reader", "writer", "admin"]);
        assert_eq!(traits["db_users"], ["app"]);
        assert!(parse_traits(&["novalue".to_string()]).is_err());
        assert!(parse_traits(&["=x".to_string()]).is_err());
        Ok(())
    }

    #[test]
    fn targets_are_kind_or_kind_slash_name() -> Result<()> {
        assert_eq!(split_target("roles", false)?, ("roles", None));
        assert_eq!(
            split_target("role/reader", false)?,
            ("role", Some("reader"))
        );
        assert!(split_target("role", true).is_err());
        assert!(split_target("role/", false).is_err());
        assert!(split_target("a/b/c", false).is_err());
        Ok(())
    }

    fn sample() -> Vec<Value> {
        vec![
            json!({"kind": "role", "version": "v7", "metadata": {"name": "auto"},
                   "spec": {"options": {"create_db_user_mode": "keep"},
                            "allow": {"db_roles": ["reader", "{{internal.db_roles}}"]}}}),
            json!({"kind": "db", "version": "v3",
                   "metadata": {"name": "example", "labels": {"env": "dev", "team": "x"}},
                   "spec": {"protocol": "postgres", "uri": "localhost:5432"}}),
        ]
    }

    #[test]
    fn text_lists_kind_name_and_a_summary() -> Result<()> {
        let text = render_resources(&sample(), ResourceFormat::Text)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Kind Name    Summary");
        assert!(lines[2].starts_with(
            "role auto    create_db_user_mode=keep db_roles=reader,{{internal.db_roles}}"
        ));
        assert_eq!(
            lines[3],
            "db   example protocol=postgres uri=localhost:5432 labels=env=dev,team=x"
        );
        Ok(())
    }

    #[test]
    fn yaml_is_multi_document_and_parses_back_to_the_same_values() -> Result<()> {
        let text = render_resources(&sample(), ResourceFormat::Yaml)?;
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(serde::Deserialize::deserialize)
            .collect::<Result<_, _>>()?;
        assert_eq!(docs, sample());
        Ok(())
    }

    #[test]
    fn json_is_an_array() -> Result<()> {
        let text = render_resources(&sample(), ResourceFormat::Json)?;
        let parsed: Value = serde_json::from_str(&text)?;
        assert_eq!(parsed, Value::Array(sample()));
        Ok(())
    }

    #[test]
    fn audit_table_shows_outcome_and_query() {
        let events = vec![
            json!({"event": "db.session.query", "time": "t", "user": "alice",
            "db_service": "example", "db_name": "app", "db_user": "alice", "db_query": "select 1"}),
        ];
        let text = render_audit(&events);
        let row = text.lines().nth(2).unwrap_or_default();
        assert_eq!(
            row,
            "t    db.session.query alice example (app) alice   select 1"
        );
    }
}
