//! MariaDB provisioning against a real server started by the test kit: TLS, certificate
//! users (`REQUIRE SUBJECT`), certificates from dbward's CAs. Every result is observed in
//! `mysql.global_priv` (account_locked), `mysql.roles_mapping` and the `user_attributes`
//! record through the test's root connection, and logins are tried for real with a
//! db-client certificate.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Result};
use dbward_pki::{CaSet, ServerVerification};
use dbward_provision::mysql::{
    all_in_one_role, mariadb_user_name, AdminTarget, MariaProvisioner, DEFAULT_SCHEMA,
};
use dbward_provision::{
    ActivateOutcome, DbUserName, DeactivateOutcome, ProvisionError, TeardownMode, MARKER_ROLE,
};
use dbward_proxy::mysql::upstream::{self, MysqlUpstream, UpstreamLogin};
use dbward_proxy::UpstreamError;
use dbward_testkit::{shared_cas, shared_maria, unique_name, ClientCertFiles, MariaServer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

const ADMIN: &str = "teleport-admin";
const CERT_TTL: Duration = Duration::from_secs(3600);

struct Env {
    maria: &'static MariaServer,
    cas: &'static CaSet,
}

/// The shared server with the setup of the provisioning guide: admin `teleport-admin` with
/// the documented grants, admin of roles `reader` and `writer`.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let maria = shared_maria().expect("shared MariaDB");
        let cas = shared_cas().expect("shared CAs");
        maria
            .sql_root(&format!(
                "CREATE USER '{ADMIN}'@'%' REQUIRE SUBJECT '/CN={ADMIN}';
                 GRANT PROCESS, CREATE USER ON *.* TO '{ADMIN}'@'%';
                 GRANT SELECT ON mysql.roles_mapping TO '{ADMIN}'@'%';
                 GRANT UPDATE ON mysql.* TO '{ADMIN}'@'%';
                 GRANT SELECT ON *.* TO '{ADMIN}'@'%';
                 CREATE DATABASE IF NOT EXISTS `{DEFAULT_SCHEMA}`;
                 GRANT ALL ON `{DEFAULT_SCHEMA}`.* TO '{ADMIN}'@'%' WITH GRANT OPTION;
                 CREATE ROLE reader WITH ADMIN '{ADMIN}'@'%';
                 CREATE ROLE writer WITH ADMIN '{ADMIN}'@'%';
                 CREATE DATABASE appdb;
                 CREATE TABLE appdb.t (x INT);
                 GRANT SELECT ON appdb.* TO reader;
                 GRANT INSERT ON appdb.* TO writer;"
            ))
            .expect("admin setup");
        Env { maria, cas }
    })
}

/// A rustls configuration presenting a db-client certificate `CN=<user>` and verifying the
/// server against dbward's db CA.
fn client_config(env: &Env, user: &str) -> Arc<rustls::ClientConfig> {
    let (cert, key) =
        dbward_pki::issue_db_client_cert(&env.cas.db_client, user, CERT_TTL).expect("client cert");
    dbward_pki::client_config(
        Some(&env.cas.db.cert_pem),
        ServerVerification::Full,
        Some((&cert, &key)),
    )
    .expect("client config")
}

fn target(env: &Env) -> AdminTarget {
    AdminTarget {
        host: env.maria.host.clone(),
        port: env.maria.port,
        server_name: "localhost".into(),
        client_config: client_config(env, ADMIN),
        admin_user: ADMIN.into(),
        default_schema: DEFAULT_SCHEMA.into(),
    }
}

/// Opens a session as `user` with its certificate and no password, as the gateway does,
/// and keeps it open.
async fn login(env: &Env, user: &str) -> Result<MysqlUpstream<TcpStream>, UpstreamError> {
    let login = UpstreamLogin {
        user,
        database: None,
        client_capabilities: dbward_proxy::mysql::GATEWAY_CAPABILITIES,
        charset: 45,
    };
    upstream::connect(
        (env.maria.host.as_str(), env.maria.port),
        client_config(env, user),
        ServerName::try_from("localhost").expect("name"),
        &login,
    )
    .await
}

/// Runs `sql` as `user` with the stock `mariadb` client and its certificate; stdout, or the
/// client's error.
fn as_user(env: &Env, user: &str, sql: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue(env.cas, user, dir.path())?;
    let out = std::process::Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--host={}", env.maria.host))
        .arg(format!("--port={}", env.maria.port))
        .arg(format!("--ssl-ca={}", files.server_ca.display()))
        .arg(format!("--ssl-cert={}", files.crt.display()))
        .arg(format!("--ssl-key={}", files.key.display()))
        .arg(format!("--user={user}"))
        .args(["-N", "-B", "-e", sql])
        .output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn root(env: &Env, sql: &str) -> String {
    env.maria.sql_root(sql).expect("root query")
}

/// `account_locked` of `user`@`%` in mysql.global_priv, as "true" or "false" ("" when the
/// user is missing).
fn locked(env: &Env, user: &str) -> String {
    let value = root(
        env,
        &format!(
            "SELECT IFNULL(JSON_VALUE(Priv, '$.account_locked'), 0) FROM mysql.global_priv \
             WHERE User = '{user}' AND Host = '%'"
        ),
    );
    match value.as_str() {
        "1" | "true" => "true".into(),
        "0" | "false" => "false".into(),
        _ => value,
    }
}

/// Roles granted to `user`@`host` in mysql.roles_mapping, comma-separated and sorted.
fn granted(env: &Env, user: &str, host: &str) -> String {
    root(
        env,
        &format!(
            "SELECT IFNULL(GROUP_CONCAT(Role ORDER BY Role), '') FROM mysql.roles_mapping \
             WHERE User = '{user}' AND Host = '{host}'"
        ),
    )
}

fn roles(names: &[&str]) -> Vec<String> {
    names.iter().map(|r| r.to_string()).collect()
}

#[tokio::test]
async fn activate_creates_a_certificate_user_with_its_all_in_one_default_role() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = unique_name("alice");
    let user = mariadb_user_name(&name);
    let role = all_in_one_role(&user);

    let outcome = provisioner
        .activate(&target, &user, &name, &roles(&["reader"]))
        .await?;
    assert_eq!(outcome, ActivateOutcome::Created);
    assert_eq!(granted(env, &name, "%"), format!("{MARKER_ROLE},{role}"));
    assert_eq!(granted(env, &role, ""), "reader");
    assert_eq!(locked(env, &name), "false");
    assert_eq!(
        root(
            env,
            &format!("SELECT JSON_VALUE(Priv, '$.default_role') FROM mysql.global_priv WHERE User = '{name}'")
        ),
        role
    );
    assert_eq!(
        root(
            env,
            &format!(
                "SELECT JSON_VALUE(Attributes, '$.user') FROM {DEFAULT_SCHEMA}.user_attributes WHERE User = '{name}'"
            )
        ),
        name
    );

    assert_eq!(
        as_user(env, &name, "SELECT current_user(), current_role()")?,
        format!("{name}@%\t{role}")
    );
    assert_eq!(as_user(env, &name, "SELECT COUNT(*) FROM appdb.t")?, "0");
    assert!(
        as_user(env, &name, "INSERT INTO appdb.t VALUES (1)").is_err(),
        "reader may not write"
    );
    Ok(())
}

#[tokio::test]
async fn keep_mode_locks_user_after_last_session_and_reactivation_unlocks_it() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = unique_name("bob");
    let user = mariadb_user_name(&name);
    let role = all_in_one_role(&user);
    provisioner
        .activate(&target, &user, &name, &roles(&["reader", "writer"]))
        .await?;

    let session = login(env, &name).await?;
    assert_eq!(provisioner.live_session_count(&target, &user).await?, 1);
    // A second session asking for other roles is refused while the first is live.
    let changed = provisioner
        .activate(&target, &user, &name, &roles(&["reader"]))
        .await;
    assert!(
        matches!(changed, Err(ProvisionError::RolesChanged { .. })),
        "{changed:?}"
    );
    assert_eq!(
        provisioner
            .activate(&target, &user, &name, &roles(&["writer", "reader"]))
            .await?,
        ActivateOutcome::AlreadyActive
    );
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Kept(true)
    );
    assert_eq!(locked(env, &name), "false", "still in use, still open");

    drop(session);
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Locked
    );
    assert_eq!(locked(env, &name), "true");
    assert_eq!(granted(env, &role, ""), "");
    let refused = login(env, &name).await;
    assert!(
        matches!(refused, Err(UpstreamError::MysqlServer { code: 4151, .. })),
        "a locked user cannot log in: {refused:?}"
    );

    assert_eq!(
        provisioner
            .activate(&target, &user, &name, &roles(&["writer"]))
            .await?,
        ActivateOutcome::Reactivated
    );
    assert_eq!(locked(env, &name), "false");
    assert_eq!(granted(env, &role, ""), "writer");
    assert_eq!(as_user(env, &name, "SELECT current_role()")?, role);
    Ok(())
}

#[tokio::test]
async fn drop_mode_drops_an_idle_user_and_its_role() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = unique_name("carol");
    let user = mariadb_user_name(&name);
    provisioner
        .activate(&target, &user, &name, &roles(&["reader"]))
        .await?;
    drop(login(env, &name).await?);
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Drop)
            .await?,
        DeactivateOutcome::Dropped
    );
    assert_eq!(
        root(
            env,
            &format!(
                "SELECT COUNT(*) FROM mysql.global_priv WHERE User IN ('{name}', '{}')",
                all_in_one_role(&user)
            )
        ),
        "0"
    );
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Drop)
            .await?,
        DeactivateOutcome::Missing
    );
    Ok(())
}

#[tokio::test]
async fn drop_mode_locks_instead_when_the_user_is_a_view_definer() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = unique_name("dave");
    let user = mariadb_user_name(&name);
    provisioner
        .activate(&target, &user, &name, &roles(&["reader"]))
        .await?;
    root(
        env,
        &format!("CREATE DEFINER = '{name}'@'%' VIEW appdb.v_{name} AS SELECT 1 AS one"),
    );
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Drop)
            .await?,
        DeactivateOutcome::DropFellBackToLock
    );
    assert_eq!(locked(env, &name), "true");
    Ok(())
}

#[tokio::test]
async fn unmanaged_users_are_never_touched() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = unique_name("erin");
    root(
        env,
        &format!("CREATE USER '{name}'@'%' REQUIRE SUBJECT '/CN={name}'"),
    );
    for user in [name.as_str(), ADMIN] {
        let db_user = DbUserName::new(user);
        let activated = provisioner
            .activate(&target, &db_user, user, &roles(&["reader"]))
            .await;
        assert!(
            matches!(activated, Err(ProvisionError::UserNotManaged { .. })),
            "{activated:?}"
        );
        let deactivated = provisioner
            .deactivate(&target, &db_user, TeardownMode::Drop)
            .await;
        assert!(matches!(
            deactivated,
            Err(ProvisionError::UserNotManaged { .. })
        ));
    }
    assert_eq!(granted(env, &name, "%"), "");
    assert_eq!(locked(env, &name), "false");
    Ok(())
}

#[tokio::test]
async fn a_managed_user_recorded_for_another_dbward_name_is_refused() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = unique_name("frank");
    let user = mariadb_user_name(&name);
    provisioner.activate(&target, &user, &name, &[]).await?;
    provisioner
        .deactivate(&target, &user, TeardownMode::Keep)
        .await?;
    let hijack = provisioner
        .activate(&target, &user, "someone-else", &roles(&["writer"]))
        .await;
    assert!(
        matches!(hijack, Err(ProvisionError::UserNotManaged { .. })),
        "{hijack:?}"
    );
    assert_eq!(
        locked(env, &name),
        "true",
        "the refused activation changed nothing"
    );
    Ok(())
}

#[tokio::test]
async fn names_with_quotes_and_unicode_work_and_a_missing_role_is_reported() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = format!("{}-o'brien ü`x", unique_name("g"));
    let user = mariadb_user_name(&name);
    assert_eq!(
        provisioner
            .activate(&target, &user, &name, &roles(&["reader"]))
            .await?,
        ActivateOutcome::Created
    );
    let state = provisioner
        .user_state(&target, &user)
        .await?
        .expect("exists");
    assert!(state.managed && state.can_login);
    assert_eq!(state.roles.into_iter().collect::<Vec<_>>(), ["reader"]);

    let missing = provisioner
        .activate(
            &target,
            &mariadb_user_name(&unique_name("h")),
            "h",
            &roles(&["no_such_role"]),
        )
        .await;
    assert!(
        matches!(&missing, Err(ProvisionError::RoleMissing { role }) if role == "no_such_role"),
        "{missing:?}"
    );
    Ok(())
}
