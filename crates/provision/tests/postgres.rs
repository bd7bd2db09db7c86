//! PostgreSQL provisioning against a real server started by the test kit: TLS, certificate
//! authentication, certificates from dbward's CAs. Every result is observed in the catalogs
//! (`pg_roles`, `pg_auth_members`) through the test's superuser, and logins are tried for real
//! with a db-client certificate.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use dbward_pki::{CaSet, ServerVerification};
use dbward_provision::postgres::{
    AdminTarget, MakeRustlsConnect, PgProvisioner, PgProvisionerSettings,
};
use dbward_provision::{
    db_user_name, ActivateOutcome, DbUserName, DeactivateOutcome, ProvisionError, TeardownMode,
    MARKER_ROLE,
};
use dbward_testkit::{shared_cas, shared_pg, unique_name, PgServer};
use tokio::task::JoinHandle;

const ADMIN: &str = "teleport-admin";
const CERT_TTL: Duration = Duration::from_secs(3600);

struct Env {
    pg: &'static PgServer,
    cas: &'static CaSet,
    /// Database the admin connects to.
    db: String,
}

/// The shared server with the setup of the provisioning guide: admin `teleport-admin`
/// (`LOGIN CREATEROLE`) holding `reader` and `writer` WITH ADMIN OPTION.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let pg = shared_pg().expect("shared PostgreSQL");
        let cas = shared_cas().expect("shared CAs");
        let db = "dbward_provision";
        pg.psql_super(&format!(
            r#"CREATE ROLE "{ADMIN}" LOGIN CREATEROLE;
               CREATE ROLE reader;
               CREATE ROLE writer;
               GRANT reader TO "{ADMIN}" WITH ADMIN OPTION;
               GRANT writer TO "{ADMIN}" WITH ADMIN OPTION;
               CREATE DATABASE {db};"#
        ))
        .expect("admin setup");
        Env {
            pg,
            cas,
            db: db.to_owned(),
        }
    })
}

/// A rustls client configuration presenting a db-client certificate `CN=<user>` and verifying
/// the server against dbward's db CA.
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

fn target_for(env: &Env, admin: &str, database: &str) -> AdminTarget {
    AdminTarget {
        host: env.pg.host.clone(),
        port: env.pg.port,
        server_name: "localhost".into(),
        client_config: client_config(env, admin),
        admin_user: admin.into(),
        database: database.into(),
    }
}

fn target(env: &Env) -> AdminTarget {
    target_for(env, ADMIN, &env.db)
}

fn quick() -> PgProvisioner {
    PgProvisioner::with_settings(PgProvisionerSettings {
        settle_time: Duration::from_millis(500),
        ..PgProvisionerSettings::default()
    })
}

/// A SQL string literal for the superuser's checks.
fn lit(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A quoted identifier for the superuser's setup statements.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn can_login(env: &Env, user: &str) -> Result<Option<bool>> {
    let out = env.pg.psql_super(&format!(
        "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
        lit(user)
    ))?;
    Ok(match out.as_str() {
        "" => None,
        "t" => Some(true),
        "f" => Some(false),
        other => return Err(anyhow!("unexpected psql output {other:?}")),
    })
}

/// Roles `user` is a direct member of, marker included.
fn memberships(env: &Env, user: &str) -> Result<BTreeSet<String>> {
    let out = env.pg.psql_super(&format!(
        "SELECT g.rolname FROM pg_auth_members m \
         JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
         WHERE u.rolname = {}",
        lit(user)
    ))?;
    Ok(out
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

struct Session {
    client: tokio_postgres::Client,
    task: JoinHandle<()>,
}

impl Session {
    /// Closes the session the way a client does (Terminate, then the socket) and waits for
    /// the connection to end on our side; the server backend may still be exiting.
    async fn close(self) {
        drop(self.client);
        let _ = self.task.await;
    }
}

/// Logs in as `user` to `database` with a db-client certificate `CN=<user>`.
async fn login(
    env: &Env,
    user: &str,
    database: &str,
) -> std::result::Result<Session, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&env.pg.host)
        .port(env.pg.port)
        .user(user)
        .dbname(database)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = MakeRustlsConnect::new(client_config(env, user), "localhost");
    let (client, connection) = config.connect(tls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Session { client, task })
}

async fn current_user(session: &Session) -> Result<String> {
    let row = session
        .client
        .query_one("SELECT current_user::text", &[])
        .await?;
    Ok(row.get(0))
}

fn roles(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn activation_creates_a_managed_user_that_logs_in_with_the_requested_roles() -> Result<()> {
    let env = env();
    let user = db_user_name(&unique_name("alice"));
    let provisioner = PgProvisioner::new();

    let outcome = provisioner
        .activate(&target(env), &user, &roles(&["reader"]))
        .await?;

    assert_eq!(outcome, ActivateOutcome::Created);
    assert_eq!(can_login(env, user.as_str())?, Some(true));
    assert_eq!(
        memberships(env, user.as_str())?,
        set(&[MARKER_ROLE, "reader"])
    );
    let session = login(env, user.as_str(), &env.db).await?;
    assert_eq!(current_user(&session).await?, user.as_str());
    let state = provisioner
        .user_state(&target(env), &user)
        .await?
        .context("user exists")?;
    assert!(state.managed && state.can_login);
    assert_eq!(state.roles, set(&["reader"]));
    session.close().await;
    Ok(())
}

#[tokio::test]
async fn keep_mode_locks_the_user_after_its_last_session_and_reactivation_restores_it() -> Result<()>
{
    let env = env();
    let user = db_user_name(&unique_name("keep"));
    let provisioner = PgProvisioner::new();
    let target = target(env);

    provisioner
        .activate(&target, &user, &roles(&["reader", "writer"]))
        .await?;
    let session = login(env, user.as_str(), &env.db).await?;
    session.close().await;
    // Right after the client went away: the backend may still be listed.
    let outcome = provisioner
        .deactivate(&target, &user, TeardownMode::Keep)
        .await?;

    assert_eq!(outcome, DeactivateOutcome::Locked);
    assert_eq!(can_login(env, user.as_str())?, Some(false));
    assert_eq!(memberships(env, user.as_str())?, set(&[MARKER_ROLE]));
    let refused = login(env, user.as_str(), &env.db)
        .await
        .err()
        .context("a locked user must not log in")?;
    // invalid_authorization_specification: role is not permitted to log in
    assert_eq!(refused.code().map(|c| c.code()), Some("28000"));

    let outcome = provisioner
        .activate(&target, &user, &roles(&["writer"]))
        .await?;
    assert_eq!(outcome, ActivateOutcome::Reactivated);
    assert_eq!(can_login(env, user.as_str())?, Some(true));
    assert_eq!(
        memberships(env, user.as_str())?,
        set(&[MARKER_ROLE, "writer"])
    );
    let session = login(env, user.as_str(), &env.db).await?;
    assert_eq!(current_user(&session).await?, user.as_str());
    session.close().await;
    Ok(())
}

#[tokio::test]
async fn idle_reactivation_strips_roles_left_by_a_crash() -> Result<()> {
    let env = env();
    let user = db_user_name(&unique_name("crash"));
    let provisioner = PgProvisioner::new();
    provisioner
        .activate(&target(env), &user, &roles(&["reader", "writer"]))
        .await?;
    // No teardown ran. A role granted by hand is stripped as well.
    env.pg.psql_super(&format!(
        "CREATE ROLE {extra}; GRANT {extra} TO {u}",
        extra = ident(&unique_name("extra")),
        u = ident(user.as_str())
    ))?;

    let outcome = provisioner
        .activate(&target(env), &user, &roles(&["reader"]))
        .await?;

    assert_eq!(outcome, ActivateOutcome::Reactivated);
    assert_eq!(
        memberships(env, user.as_str())?,
        set(&[MARKER_ROLE, "reader"])
    );
    Ok(())
}

#[tokio::test]
async fn drop_mode_drops_an_idle_user() -> Result<()> {
    let env = env();
    let user = db_user_name(&unique_name("drop"));
    let provisioner = PgProvisioner::new();
    let target = target(env);
    provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await?;
    login(env, user.as_str(), &env.db).await?.close().await;

    let outcome = provisioner
        .deactivate(&target, &user, TeardownMode::Drop)
        .await?;

    assert_eq!(outcome, DeactivateOutcome::Dropped);
    assert_eq!(can_login(env, user.as_str())?, None);
    assert_eq!(provisioner.user_state(&target, &user).await?, None);
    // Tearing down again finds nothing to do.
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Drop)
            .await?,
        DeactivateOutcome::Missing
    );
    Ok(())
}

#[tokio::test]
async fn drop_mode_falls_back_to_locking_when_the_user_owns_a_table() -> Result<()> {
    let env = env();
    let user = db_user_name(&unique_name("owner"));
    let table = unique_name("owned");
    let provisioner = PgProvisioner::new();
    let target = target(env);
    provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await?;
    env.pg.psql_super_in(
        &env.db,
        &format!(
            "CREATE TABLE {table} (id int); ALTER TABLE {table} OWNER TO {}",
            ident(user.as_str())
        ),
    )?;

    let outcome = provisioner
        .deactivate(&target, &user, TeardownMode::Drop)
        .await?;

    assert_eq!(outcome, DeactivateOutcome::DropFellBackToLock);
    assert_eq!(can_login(env, user.as_str())?, Some(false));
    assert_eq!(memberships(env, user.as_str())?, set(&[MARKER_ROLE]));
    let owner = env.pg.psql_super_in(
        &env.db,
        &format!(
            "SELECT tableowner FROM pg_tables WHERE tablename = {}",
            lit(&table)
        ),
    )?;
    assert_eq!(owner, user.as_str());
    Ok(())
}

#[tokio::test]
async fn a_live_session_with_other_roles_refuses_activation_and_survives_teardown() -> Result<()> {
    let env = env();
    let name = unique_name("alice");
    let user = db_user_name(&name);
    let provisioner = quick();
    let target = target(env);
    provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await?;
    // The live session is in another database: the check spans the cluster.
    let session = login(env, user.as_str(), "postgres").await?;
    assert_eq!(provisioner.live_session_count(&target, &user).await?, 1);

    let refused = provisioner
        .activate(&target, &user, &roles(&["reader", "writer"]))
        .await
        .err()
        .context("changed roles must be refused")?;
    assert_eq!(
        refused.to_string(),
        format!(
            "roles for user \"{name}\" have changed. Please quit all active connections and try again."
        )
    );
    assert!(matches!(refused, ProvisionError::RolesChanged { .. }));
    assert_eq!(
        memberships(env, user.as_str())?,
        set(&[MARKER_ROLE, "reader"])
    );

    // The same roles, in another order and with a duplicate: accepted, nothing changes.
    let outcome = provisioner
        .activate(&target, &user, &roles(&["reader", "reader"]))
        .await?;
    assert_eq!(outcome, ActivateOutcome::AlreadyActive);

    let outcome = provisioner
        .deactivate(&target, &user, TeardownMode::Keep)
        .await?;
    assert_eq!(outcome, DeactivateOutcome::Kept(true));
    assert_eq!(can_login(env, user.as_str())?, Some(true));
    assert_eq!(
        memberships(env, user.as_str())?,
        set(&[MARKER_ROLE, "reader"])
    );
    assert_eq!(current_user(&session).await?, user.as_str());

    session.close().await;
    let outcome = provisioner
        .deactivate(&target, &user, TeardownMode::Drop)
        .await?;
    assert_eq!(outcome, DeactivateOutcome::Dropped);
    Ok(())
}

#[tokio::test]
async fn users_not_created_by_dbward_are_refused_and_left_unchanged() -> Result<()> {
    let env = env();
    let bob = unique_name("bob");
    env.pg
        .psql_super(&format!("CREATE ROLE {bob} LOGIN; GRANT writer TO {bob}"))?;
    let provisioner = PgProvisioner::new();
    let target = target(env);

    // The marker role exists once any user was created; make sure it does.
    provisioner
        .activate(&target, &db_user_name(&unique_name("m")), &[])
        .await?;
    for name in ["postgres", ADMIN, bob.as_str(), MARKER_ROLE, "reader"] {
        let before = (can_login(env, name)?, memberships(env, name)?);
        let user = DbUserName::new(name);

        let refused = provisioner
            .activate(&target, &user, &roles(&["reader"]))
            .await
            .err()
            .with_context(|| format!("{name} must be refused"))?;
        assert_eq!(
            refused.to_string(),
            format!("user \"{name}\" already exists in this database and is not managed by dbward")
        );
        for mode in [TeardownMode::Keep, TeardownMode::Drop] {
            let refused = provisioner.deactivate(&target, &user, mode).await;
            assert!(
                matches!(refused, Err(ProvisionError::UserNotManaged { .. })),
                "{name}: {refused:?}"
            );
        }

        assert_eq!((can_login(env, name)?, memberships(env, name)?), before);
    }
    Ok(())
}

#[tokio::test]
async fn names_with_quotes_spaces_unicode_sql_and_80_bytes_work() -> Result<()> {
    let env = env();
    let long = format!("{}-{}", "long".repeat(19), unique_name("x"));
    assert!(long.len() > 63);
    let names = [
        unique_name("o'brien \"the\" admin"),
        unique_name("Ünïcode 名前 user"),
        unique_name("x\"; DROP ROLE reader; --"),
        long.clone(),
    ];
    let provisioner = PgProvisioner::new();
    let target = target(env);
    for name in &names {
        let user = db_user_name(name);
        if name == &long {
            assert!(user.as_str().starts_with("dw-"));
            assert_eq!(user.as_str().len(), 30);
        } else {
            assert_eq!(user.as_str(), name);
        }

        provisioner
            .activate(&target, &user, &roles(&["reader"]))
            .await?;
        assert_eq!(
            memberships(env, user.as_str())?,
            set(&[MARKER_ROLE, "reader"]),
            "{name}"
        );
        let session = login(env, user.as_str(), &env.db).await?;
        assert_eq!(current_user(&session).await?, user.as_str());
        session.close().await;
        let outcome = provisioner
            .deactivate(&target, &user, TeardownMode::Drop)
            .await?;
        assert_eq!(outcome, DeactivateOutcome::Dropped, "{name}");
    }
    // The role named in the injection attempt is still there.
    assert_eq!(can_login(env, "reader")?, Some(false));
    Ok(())
}

#[tokio::test]
async fn a_missing_db_role_is_named_and_nothing_is_created() -> Result<()> {
    let env = env();
    let user = db_user_name(&unique_name("carol"));
    let missing = unique_name("no such role");
    let provisioner = PgProvisioner::new();

    let refused = provisioner
        .activate(&target(env), &user, &roles(&["reader", &missing]))
        .await
        .err()
        .context("a missing role must be refused")?;

    match &refused {
        ProvisionError::RoleMissing { role } => assert_eq!(role, &missing),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(refused.to_string().contains(&format!("\"{missing}\"")));
    assert_eq!(can_login(env, user.as_str())?, None);
    Ok(())
}

#[tokio::test]
async fn an_admin_without_createrole_gets_a_clear_error_and_a_preflight_fix() -> Result<()> {
    let env = env();
    let admin = unique_name("weak admin");
    env.pg
        .psql_super(&format!("CREATE ROLE {} LOGIN", ident(&admin)))?;
    let target = target_for(env, &admin, &env.db);
    let user = db_user_name(&unique_name("dave"));
    let provisioner = PgProvisioner::new();

    let refused = provisioner
        .activate(&target, &user, &[])
        .await
        .err()
        .context("activation without CREATEROLE must fail")?;

    assert!(
        matches!(refused, ProvisionError::AdminLacksCreateRole { .. }),
        "{refused:?}"
    );
    assert!(refused
        .to_string()
        .contains(&format!("ALTER ROLE {} CREATEROLE;", ident(&admin))));
    assert_eq!(can_login(env, user.as_str())?, None);

    let findings = provisioner.preflight(&target, &[]).await?;
    let fixes: Vec<&str> = findings.iter().map(|f| f.fix.as_str()).collect();
    assert_eq!(
        fixes,
        vec![format!("ALTER ROLE {} CREATEROLE;", ident(&admin))]
    );
    Ok(())
}

#[tokio::test]
async fn preflight_finds_nothing_for_the_documented_admin_setup() -> Result<()> {
    let env = env();
    let findings = PgProvisioner::new()
        .preflight(&target(env), &roles(&["reader", "writer"]))
        .await?;
    assert_eq!(findings, vec![]);
    Ok(())
}

#[tokio::test]
async fn preflight_lists_missing_role_temporary_privilege_and_read_only_default() -> Result<()> {
    let env = env();
    let admin = unique_name("ro_admin");
    let db = unique_name("notemp");
    let missing = unique_name("ghost");
    env.pg.psql_super(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE; \
         ALTER ROLE {admin} SET default_transaction_read_only = on; \
         CREATE DATABASE {db}; \
         REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC;"
    ))?;
    let target = target_for(env, &admin, &db);
    let provisioner = PgProvisioner::new();

    let findings = provisioner
        .preflight(&target, &roles(&["reader", &missing]))
        .await?;

    let fixes: BTreeSet<String> = findings.iter().map(|f| f.fix.clone()).collect();
    assert_eq!(
        fixes,
        [
            format!("ALTER ROLE \"{admin}\" SET default_transaction_read_only = off;"),
            format!("GRANT TEMPORARY ON DATABASE \"{db}\" TO \"{admin}\";"),
            format!("CREATE ROLE \"{missing}\";"),
        ]
        .into_iter()
        .collect()
    );

    // Activation fails cleanly, naming the missing privilege (once writes are allowed; a
    // new provisioner, because the setting applies to new connections).
    env.pg.psql_super(&format!(
        "ALTER ROLE {admin} RESET default_transaction_read_only"
    ))?;
    let refused = PgProvisioner::new()
        .activate(&target, &db_user_name(&unique_name("erin")), &[])
        .await
        .err()
        .context("activation without TEMPORARY must fail")?;
    assert!(
        matches!(refused, ProvisionError::AdminLacksTemporary { .. }),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_read_only_database_is_reported_by_sqlstate() -> Result<()> {
    let env = env();
    let admin = unique_name("ro_only");
    env.pg.psql_super(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE; \
         ALTER ROLE {admin} SET default_transaction_read_only = on;"
    ))?;
    let target = target_for(env, &admin, &env.db);
    let user = db_user_name(&unique_name("frank"));

    let refused = PgProvisioner::new()
        .activate(&target, &user, &roles(&["reader"]))
        .await
        .err()
        .context("activation on a read-only database must fail")?;

    assert!(matches!(refused, ProvisionError::ReadOnly), "{refused:?}");
    assert_eq!(can_login(env, user.as_str())?, None);
    Ok(())
}

#[tokio::test]
async fn a_broken_admin_connection_is_replaced() -> Result<()> {
    let env = env();
    // A dedicated admin so that terminating its backends affects no other test.
    let admin = unique_name("pool_admin");
    env.pg
        .psql_super(&format!("CREATE ROLE {admin} LOGIN CREATEROLE"))?;
    let target = target_for(env, &admin, &env.db);
    let provisioner = PgProvisioner::new();
    provisioner.warm_up(&target).await?;
    assert_eq!(provisioner.idle_connections(&target), 1);

    let user = db_user_name(&unique_name("gina"));
    provisioner.activate(&target, &user, &[]).await?;
    assert_eq!(
        provisioner.idle_connections(&target),
        1,
        "connection reused"
    );

    let killed = env.pg.psql_super(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = {}",
        lit(&admin)
    ))?;
    assert_eq!(killed, "1");
    // Let the client notice the closed socket, or not: both paths must work.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let outcome = provisioner
        .deactivate(&target, &user, TeardownMode::Keep)
        .await?;
    assert_eq!(outcome, DeactivateOutcome::Locked);
    assert_eq!(provisioner.idle_connections(&target), 1);
    Ok(())
}
