//! Attacks by a provisioned user on MariaDB provisioning (PROVISIONING.md §8), against a
//! real server started by the test kit. What each test asserts is observed in `mysql.*`
//! through root.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Result};
use dbward_pki::{CaSet, ServerVerification};
use dbward_provision::mysql::{mariadb_user_name, AdminTarget, MariaProvisioner, DEFAULT_SCHEMA};
use dbward_provision::{ProvisionError, TeardownMode};
use dbward_testkit::{shared_cas, shared_maria, unique_name, ClientCertFiles, MariaServer};

const ADMIN: &str = "attack-admin";
const CERT_TTL: Duration = Duration::from_secs(3600);

struct Env {
    maria: &'static MariaServer,
    cas: &'static CaSet,
}

/// The shared server with an admin set up as the provisioning guide says.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let maria = shared_maria().expect("shared MariaDB");
        let cas = shared_cas().expect("shared CAs");
        maria
            .sql_root(&format!(
                "CREATE USER '{ADMIN}'@'%' REQUIRE SUBJECT '/CN={ADMIN}';
                 GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO '{ADMIN}'@'%';
                 GRANT SELECT ON mysql.roles_mapping TO '{ADMIN}'@'%';
                 GRANT UPDATE ON mysql.* TO '{ADMIN}'@'%';
                 GRANT SELECT ON *.* TO '{ADMIN}'@'%';
                 CREATE DATABASE IF NOT EXISTS `{DEFAULT_SCHEMA}`;
                 GRANT ALL ON `{DEFAULT_SCHEMA}`.* TO '{ADMIN}'@'%' WITH GRANT OPTION;"
            ))
            .expect("admin setup");
        Env { maria, cas }
    })
}

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
        engine: dbward_provision::Engine::Mysql,
        host: env.maria.host.clone(),
        port: env.maria.port,
        server_name: "localhost".into(),
        client_config: client_config(env, ADMIN),
        admin_user: ADMIN.into(),
        database: DEFAULT_SCHEMA.into(),
        allowed_predefined_roles: Vec::new(),
    }
}

/// Runs `sql` as `user` with the `mariadb` client and a db-client certificate.
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

/// A db role that holds another role WITH ADMIN OPTION (directly or through a role granted
/// to it) lets the user grant that role to any account; the grant is not the user's own, so
/// no teardown undoes it and it outlives the session. Such a role is never granted.
#[tokio::test]
async fn a_role_that_can_grant_other_roles_is_never_granted() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let lead = unique_name("lead");
    let payroll = unique_name("payroll");
    let bystander = unique_name("bystander");
    root(
        env,
        &format!(
            "CREATE ROLE `{payroll}`; CREATE ROLE `{lead}` WITH ADMIN '{ADMIN}'@'%';
             GRANT `{payroll}` TO `{lead}` WITH ADMIN OPTION;
             CREATE USER '{bystander}'@'%' ACCOUNT LOCK;"
        ),
    );
    let name = unique_name("granter");
    let user = mariadb_user_name(&name);
    let activated = provisioner
        .activate(&target, &user, &name, std::slice::from_ref(&lead))
        .await;
    if activated.is_ok() {
        // The attack the refusal prevents: a grant that outlives the session.
        let _ = as_user(
            env,
            user.as_str(),
            &format!("GRANT `{payroll}` TO '{bystander}'@'%'"),
        );
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?;
    }
    let granted = root(
        env,
        &format!(
            "SELECT COUNT(*) FROM mysql.roles_mapping WHERE User = '{bystander}' AND Role = '{payroll}'"
        ),
    );
    assert_eq!(
        granted, "0",
        "{bystander} was granted {payroll} by the provisioned user, and keeps it after its session"
    );
    match activated {
        Err(ProvisionError::RoleForbidden { role, reason }) => {
            assert_eq!(role, lead);
            assert!(reason.contains("ADMIN OPTION"), "{reason}");
        }
        other => panic!("{lead} must be refused, got {other:?}"),
    }
    Ok(())
}

/// A db role that may change the admin's schema lets the user rewrite dbward's record of
/// which person each account belongs to (`user_attributes`), or put a trigger on it that
/// runs whenever the admin records another user. Such a role is never granted.
#[tokio::test]
async fn a_role_that_can_change_the_admin_schema_is_never_granted() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let keeper = unique_name("keeper");
    root(
        env,
        &format!(
            "CREATE ROLE `{keeper}` WITH ADMIN '{ADMIN}'@'%';
             GRANT SELECT, INSERT, UPDATE, DELETE ON `{DEFAULT_SCHEMA}`.* TO `{keeper}`;"
        ),
    );
    let victim_name = unique_name("victim");
    let victim = mariadb_user_name(&victim_name);
    provisioner
        .activate(&target, &victim, &victim_name, &[])
        .await?;
    let records = |env: &Env| {
        root(
            env,
            &format!(
                "SELECT COUNT(*) FROM `{DEFAULT_SCHEMA}`.user_attributes WHERE User = '{}'",
                victim.as_str()
            ),
        )
    };
    assert_eq!(records(env), "1");

    let name = unique_name("scribe");
    let user = mariadb_user_name(&name);
    let activated = provisioner
        .activate(&target, &user, &name, std::slice::from_ref(&keeper))
        .await;
    if activated.is_ok() {
        let _ = as_user(
            env,
            user.as_str(),
            &format!(
                "UPDATE `{DEFAULT_SCHEMA}`.user_attributes SET Attributes = JSON_OBJECT('user', 'someone else'); \
                 DELETE FROM `{DEFAULT_SCHEMA}`.user_attributes WHERE User = '{}'",
                victim.as_str()
            ),
        );
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?;
    }
    assert_eq!(
        records(env),
        "1",
        "the provisioned user deleted another user's record"
    );
    match activated {
        Err(ProvisionError::RoleForbidden { role, reason }) => {
            assert_eq!(role, keeper);
            assert!(reason.contains(DEFAULT_SCHEMA), "{reason}");
        }
        other => panic!("{keeper} must be refused, got {other:?}"),
    }
    provisioner
        .deactivate(&target, &victim, TeardownMode::Drop)
        .await?;
    Ok(())
}
