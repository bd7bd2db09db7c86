//! Attacks by a provisioned user on PostgreSQL provisioning (PROVISIONING.md §8), against a
//! real server started by the test kit. Each test is an attack; what it asserts is observed
//! in the catalogs through the test's superuser.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use dbward_pki::{CaSet, ServerVerification};
use dbward_provision::postgres::{
    AdminTarget, MakeRustlsConnect, PgProvisioner, PgProvisionerSettings,
};
use dbward_provision::{db_user_name, ProvisionError, TeardownMode};
use dbward_testkit::{shared_cas, shared_pg, unique_name, PgServer};

const ADMIN: &str = "attack-admin";
const CERT_TTL: Duration = Duration::from_secs(3600);

struct Env {
    pg: &'static PgServer,
    cas: &'static CaSet,
    db: String,
}

/// The shared server with an admin `attack-admin` (`LOGIN CREATEROLE`).
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let pg = shared_pg().expect("shared PostgreSQL");
        let cas = shared_cas().expect("shared CAs");
        let db = "dbward_attacks";
        pg.psql_super(&format!(
            r#"CREATE ROLE "{ADMIN}" LOGIN CREATEROLE; CREATE DATABASE {db};"#
        ))
        .expect("admin setup");
        Env {
            pg,
            cas,
            db: db.to_owned(),
        }
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
        engine: dbward_provision::Engine::Postgres,
        host: env.pg.host.clone(),
        port: env.pg.port,
        server_name: "localhost".into(),
        client_config: client_config(env, ADMIN),
        admin_user: ADMIN.into(),
        database: env.db.clone(),
        allowed_predefined_roles: Vec::new(),
    }
}

fn quick() -> PgProvisioner {
    PgProvisioner::with_settings(PgProvisionerSettings {
        settle_time: Duration::from_millis(500),
        ..PgProvisionerSettings::default()
    })
}

fn lit(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Runs `sql` as `user` (certificate login), then waits until its backend is gone.
async fn as_user(env: &Env, user: &str, sql: &str) -> Result<()> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&env.pg.host)
        .port(env.pg.port)
        .user(user)
        .dbname(&env.db)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = MakeRustlsConnect::new(client_config(env, user), "localhost");
    let (client, connection) = config.connect(tls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let ran = client.batch_execute(sql).await;
    drop(client);
    let _ = task.await;
    ran.with_context(|| format!("{user} runs {sql}"))?;
    for _ in 0..200 {
        let backends = env.pg.psql_super(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {}",
            lit(user)
        ))?;
        if backends == "0" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(anyhow!("the session of {user} is still listed"))
}

/// Whether `member` is a direct member of `role`.
fn is_member(env: &Env, member: &str, role: &str) -> Result<bool> {
    Ok(env.pg.psql_super(&format!(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
         JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = {} AND u.rolname = {}",
        lit(role),
        lit(member)
    ))? == "1")
}

/// A db role that holds another role WITH ADMIN OPTION lets the user grant that role to
/// anyone: a grant made by the user is not the user's own membership, so no teardown undoes
/// it, and it outlives the session (and the user). Such a role is never granted.
#[tokio::test]
async fn a_role_that_can_grant_other_roles_is_never_granted() -> Result<()> {
    let env = env();
    let provisioner = quick();
    let target = target(env);
    let lead = unique_name("lead");
    let payroll = unique_name("payroll");
    let bystander = unique_name("bystander");
    env.pg.psql_super(&format!(
        r#"CREATE ROLE {payroll}; CREATE ROLE {lead}; CREATE ROLE {bystander};
           GRANT {payroll} TO {lead} WITH ADMIN OPTION;
           GRANT {lead} TO "{ADMIN}" WITH ADMIN OPTION;"#
    ))?;
    let user = db_user_name(&unique_name("granter"));
    let activated = provisioner
        .activate(&target, &user, std::slice::from_ref(&lead))
        .await;
    if activated.is_ok() {
        // The attack the refusal prevents: a grant that outlives the session.
        let _ = as_user(
            env,
            user.as_str(),
            &format!("GRANT {payroll} TO {bystander}"),
        )
        .await;
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?;
    }
    assert!(
        !is_member(env, &bystander, &payroll)?,
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
