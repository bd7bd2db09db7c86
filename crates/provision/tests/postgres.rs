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
        engine: dbward_provision::Engine::Postgres,
        host: env.pg.host.clone(),
        port: env.pg.port,
        server_name: "localhost".into(),
        client_config: client_config(env, admin),
        admin_user: admin.into(),
        database: database.into(),
        allowed_predefined_roles: Vec::new(),
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
    // No teardown ran. A role granted by hand is stripped as well. From PostgreSQL 16 a grant
    // can only be revoked by its grantor (or a role with the grantor's privileges), so there
    // the hand grant is one the admin made, of a role it holds WITH ADMIN OPTION.
    let extra = ident(&unique_name("extra"));
    let u = ident(user.as_str());
    if env.pg.major_version() >= 16 {
        env.pg.psql_super(&format!(
            "CREATE ROLE {extra}; GRANT {extra} TO {admin} WITH ADMIN OPTION; \
             SET ROLE {admin}; GRANT {extra} TO {u}; RESET ROLE",
            admin = ident(ADMIN)
        ))?;
    } else {
        env.pg
            .psql_super(&format!("CREATE ROLE {extra}; GRANT {extra} TO {u}"))?;
    }

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
    assert_eq!(outcome, DeactivateOutcome::Kept);
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

        let after = (can_login(env, name)?, memberships(env, name)?);
        assert_eq!(after.0, before.0, "{name}: login changed");
        // Other tests of this binary create roles through the admin meanwhile, which may
        // make it a member of them; what this test tried to grant is never among them.
        assert!(
            after.1.is_superset(&before.1),
            "{name}: {before:?} -> {after:?}"
        );
        for gained in after.1.difference(&before.1) {
            assert!(
                gained != "reader" && gained != MARKER_ROLE,
                "{name} gained {gained}"
            );
        }
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

    ensure_marker(env).await?;
    let findings = provisioner.preflight(&target, &[]).await?;
    let fixes: Vec<&str> = findings.iter().map(|f| f.fix.as_str()).collect();
    let mut expected = vec![format!("ALTER ROLE {} CREATEROLE;", ident(&admin))];
    // From PostgreSQL 16 CREATEROLE no longer lets an admin grant the marker another created.
    if env.pg.major_version() >= 16 {
        expected.push(marker_fix(&admin));
    }
    assert_eq!(fixes, expected);
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
    ensure_marker(env).await?;

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
            // Every PostgreSQL version: activation grants only roles held WITH ADMIN OPTION.
            format!("GRANT \"reader\" TO \"{admin}\" WITH ADMIN OPTION;"),
        ]
        .into_iter()
        .chain((env.pg.major_version() >= 16).then(|| marker_fix(&admin)))
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
    if env.pg.major_version() >= 16 {
        grant_marker_to(env, &admin)?;
    }
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

// ---------------------------------------------------------------------------------------------
// The privilege boundary (PROVISIONING.md §8): the provisioned user is the adversary.
// ---------------------------------------------------------------------------------------------

/// Runs `sql` as `user` (a session of its own), the way a person connected through the gateway
/// would, and waits until the server no longer lists the session.
async fn as_user(env: &Env, user: &str, database: &str, sql: &str) -> Result<()> {
    let session = login(env, user, database).await?;
    session
        .client
        .batch_execute(sql)
        .await
        .with_context(|| format!("{user} runs {sql}"))?;
    session.close().await;
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

/// The helpers the admin connection installs, with argument and result types: a planted
/// function of the same name and arguments in `public` must never be picked.
const HELPERS: &[(&str, &str, &str)] = &[
    ("dbward_exists", "text", "boolean"),
    ("dbward_is_managed", "text, text", "boolean"),
    ("dbward_held_roles", "text, text", "text[]"),
    ("dbward_live_sessions", "text", "bigint"),
    ("dbward_require_createrole", "", "void"),
    ("dbward_check_requested", "text[], text, text[]", "void"),
    (
        "dbward_forbidden_roles",
        "text[], text, text[]",
        "SETOF text",
    ),
    ("dbward_grant", "text, text[]", "void"),
    ("dbward_revoke_one", "text, text, text", "void"),
    ("dbward_clean_slate", "text, text, boolean", "void"),
    ("dbward_ensure_marker", "text", "void"),
    ("dbward_activate", "text, text[], text", "text"),
    ("dbward_activate", "text, text[], text, text[]", "text"),
    ("dbward_disable_login", "text, text", "text"),
    ("dbward_finish_teardown", "text, text, boolean", "text"),
];

/// What `attacker` plants in `public`: every object logs its call (as whoever runs it) into
/// `public.hijack_log` and tries to make `attacker` CREATEROLE, then behaves like the
/// built-in it shadows so that the caller carries on unaware.
fn planted_objects(attacker: &str) -> String {
    let mut sql = format!(
        r#"
        CREATE TABLE public.hijack_log (called text, caller text DEFAULT current_user);
        GRANT INSERT ON public.hijack_log TO PUBLIC;
        CREATE FUNCTION public.dw_escalate(what text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO public.hijack_log (called) VALUES (what);
          BEGIN
            EXECUTE pg_catalog.format('ALTER ROLE %I CREATEROLE', {attacker});
          EXCEPTION WHEN OTHERS THEN NULL;
          END;
        END $$;
        CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('format/2'); RETURN pg_catalog.format(f, a); END $$;
        CREATE FUNCTION public.format(f text, a text, b text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('format/3'); RETURN pg_catalog.format(f, a, b); END $$;
        CREATE FUNCTION public.format(f text, a text, b text, c text) RETURNS text
        LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('format/4'); RETURN pg_catalog.format(f, a, b, c); END $$;
        CREATE FUNCTION public.dw_agg_step(acc text[], v text) RETURNS text[] LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('array_agg'); RETURN pg_catalog.array_append(acc, v); END $$;
        CREATE AGGREGATE public.array_agg(text) (SFUNC = public.dw_agg_step, STYPE = text[]);
        CREATE FUNCTION public.dw_contains(a text[], b text[]) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('@>'); RETURN a OPERATOR(pg_catalog.@>) b; END $$;
        CREATE OPERATOR public.@> (LEFTARG = text[], RIGHTARG = text[], FUNCTION = public.dw_contains);
        CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('unnest'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
        CREATE FUNCTION public.starts_with(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('starts_with'); RETURN pg_catalog.starts_with(a, b); END $$;
        "#,
        attacker = lit(attacker),
    );
    for (name, args, result) in HELPERS {
        let body = match *result {
            "void" => "RETURN;",
            "SETOF text" => "RETURN;",
            "boolean" => "RETURN false;",
            "bigint" => "RETURN 0;",
            "text[]" => "RETURN '{}';",
            _ => "RETURN 'created';",
        };
        sql.push_str(&format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {result} LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM public.dw_escalate('{name}'); {body} END $$;\n"
        ));
    }
    sql
}

/// `user`'s attributes as the superuser sees them in `pg_authid`:
/// `login|super|createdb|createrole|replication|bypassrls|inherit|connlimit|password|validuntil`
/// with the password and expiry reduced to `none` / `set`.
fn attributes(env: &Env, user: &str) -> Result<String> {
    env.pg.psql_super(&format!(
        "SELECT concat_ws('|', rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, \
         rolbypassrls, rolinherit, rolconnlimit, \
         CASE WHEN rolpassword IS NULL THEN 'none' ELSE 'set' END, \
         CASE WHEN rolvaliduntil IS NULL OR rolvaliduntil = 'infinity' THEN 'none' ELSE 'set' END) \
         FROM pg_authid WHERE rolname = {}",
        lit(user)
    ))
}

/// A clean slate: no superuser-like attribute, inherit, no connection limit, no password, no
/// expiry (PostgreSQL cannot put VALID UNTIL back to NULL; 'infinity' counts as none).
fn clean(login: bool) -> String {
    format!("{}|f|f|f|f|f|t|-1|none|none", if login { "t" } else { "f" })
}

/// Per-role and per-database settings of `user` (`pg_db_role_setting`).
fn settings(env: &Env, user: &str) -> Result<String> {
    env.pg.psql_super(&format!(
        "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles u ON u.oid = s.setrole \
         WHERE u.rolname = {}",
        lit(user)
    ))
}

/// Makes `admin` hold the marker role WITH ADMIN OPTION, creating the marker when missing, as
/// the setup guide asks for PostgreSQL 16+ where the marker was created by another admin.
fn grant_marker_to(env: &Env, admin: &str) -> Result<()> {
    env.pg.psql_super(&format!(
        "DO $$BEGIN CREATE ROLE {m}; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$; \
         GRANT {m} TO {a} WITH ADMIN OPTION;",
        m = ident(MARKER_ROLE),
        a = ident(admin)
    ))?;
    Ok(())
}

/// Makes sure the marker role exists, created the documented way (by the admin, on first
/// use), so that what the preflight reports about it does not depend on test order.
async fn ensure_marker(env: &Env) -> Result<()> {
    let provisioner = quick();
    let user = db_user_name(&unique_name("first"));
    provisioner.activate(&target(env), &user, &[]).await?;
    provisioner
        .deactivate(&target(env), &user, TeardownMode::Drop)
        .await?;
    Ok(())
}

/// The preflight's fix for an admin that does not hold the marker role WITH ADMIN OPTION
/// (PostgreSQL 16+, where the marker was created by someone else).
fn marker_fix(admin: &str) -> String {
    format!(
        "GRANT {} TO {} WITH ADMIN OPTION;",
        ident(MARKER_ROLE),
        ident(admin)
    )
}

/// Roles that are direct members of `role`, without the admin (PostgreSQL 16+ makes the
/// creator of a role its member WITH ADMIN OPTION).
fn members_of(env: &Env, role: &str) -> Result<BTreeSet<String>> {
    let out = env.pg.psql_super(&format!(
        "SELECT u.rolname FROM pg_auth_members m \
         JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
         WHERE g.rolname = {} AND u.rolname <> {}",
        lit(role),
        lit(ADMIN)
    ))?;
    Ok(out
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn planted_functions_aggregates_and_operators_are_never_called_by_the_admin() -> Result<()> {
    let env = env();
    // A database of its own: the planted objects must not reach other tests.
    let db = unique_name("hijack");
    env.pg.psql_super(&format!("CREATE DATABASE {db}"))?;
    let target = target_for(env, ADMIN, &db);
    let provisioner = quick();
    let attacker = db_user_name(&unique_name("mallory"));
    let a = attacker.as_str();

    provisioner
        .activate(&target, &attacker, &roles(&["reader"]))
        .await?;
    // A schema on the admin's default search path ("$user", public) that the user may write
    // to, as public was for everyone before PostgreSQL 15.
    env.pg.psql_super_in(
        &db,
        &format!("GRANT CREATE ON SCHEMA public TO {}", ident(a)),
    )?;
    let session = login(env, a, &db).await?;
    session.client.batch_execute(&planted_objects(a)).await?;

    // Activation while the session is live (compares role sets), teardown while live.
    assert_eq!(
        provisioner
            .activate(&target, &attacker, &roles(&["reader"]))
            .await?,
        ActivateOutcome::AlreadyActive
    );
    assert_eq!(provisioner.live_session_count(&target, &attacker).await?, 1);
    assert_eq!(
        provisioner
            .deactivate(&target, &attacker, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Kept
    );
    session.close().await;
    // Teardown, reactivation, the reconciler's listing and its teardown.
    assert_eq!(
        provisioner
            .deactivate(&target, &attacker, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Locked
    );
    assert_eq!(
        provisioner
            .activate(&target, &attacker, &roles(&["reader", "writer"]))
            .await?,
        ActivateOutcome::Reactivated
    );
    assert!(provisioner
        .list_active_managed(&target)
        .await?
        .contains(&a.to_owned()));
    assert_eq!(
        provisioner
            .deactivate(&target, &attacker, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Locked
    );
    assert!(provisioner.user_state(&target, &attacker).await?.is_some());
    // A new user is created and dropped in that database.
    let other = db_user_name(&unique_name("bystander"));
    assert_eq!(
        provisioner
            .activate(&target, &other, &roles(&["reader"]))
            .await?,
        ActivateOutcome::Created
    );
    assert_eq!(
        provisioner
            .deactivate(&target, &other, TeardownMode::Drop)
            .await?,
        DeactivateOutcome::Dropped
    );
    // Drop mode on the attacker falls back to locking: it owns the planted objects.
    provisioner
        .activate(&target, &attacker, &roles(&["reader"]))
        .await?;
    assert_eq!(
        provisioner
            .deactivate(&target, &attacker, TeardownMode::Drop)
            .await?,
        DeactivateOutcome::DropFellBackToLock
    );
    // The preflight (`dbward db check`) as well.
    provisioner
        .preflight(&target, &roles(&["reader", "writer"]))
        .await?;

    let calls = env.pg.psql_super_in(
        &db,
        "SELECT coalesce(string_agg(called || ' as ' || caller, ', '), '') FROM public.hijack_log",
    )?;
    assert_eq!(calls, "", "planted objects were called");
    assert_eq!(attributes(env, a)?, clean(false));
    Ok(())
}

#[tokio::test]
async fn what_a_user_does_to_its_own_role_does_not_outlive_its_session() -> Result<()> {
    let env = env();
    let provisioner = quick();
    let target = target(env);
    let user = db_user_name(&unique_name("tamper"));
    let u = user.as_str();
    // `secret` is a role the user was never granted. (A db role holding it WITH ADMIN OPTION,
    // which would let the user grant it to itself, is never granted: attacks_postgres.rs.)
    let gate = unique_name("gate");
    let secret = unique_name("secret");
    let accomplice = unique_name("accomplice");
    env.pg.psql_super(&format!(
        "CREATE ROLE {gate}; CREATE ROLE {secret}; CREATE ROLE {accomplice} LOGIN; \
         GRANT {secret} TO {admin} WITH ADMIN OPTION; \
         GRANT {gate} TO {admin} WITH ADMIN OPTION;",
        admin = ident(ADMIN)
    ))?;
    let tamper = |db: &str| {
        format!(
            "ALTER ROLE CURRENT_USER PASSWORD 'chosen by the user'; \
             ALTER ROLE CURRENT_USER SET search_path = evil, public; \
             ALTER ROLE CURRENT_USER IN DATABASE {db} SET work_mem = '64MB';"
        )
    };
    // What only someone else could have given it (the admin tricked; a superuser's grants
    // are a_role_a_superuser_granted_...'s case): since PostgreSQL 15 a role cannot even grant
    // itself to another.
    // (From PostgreSQL 16 only a role with CREATEDB may take CREATEDB away; the admin has not.)
    let createdb = if env.pg.major_version() < 16 {
        "CREATEDB"
    } else {
        ""
    };
    let gained = format!(
        "ALTER ROLE {u} {createdb} CREATEROLE NOINHERIT CONNECTION LIMIT 3 VALID UNTIL '2031-01-01'; \
         SET ROLE {admin}; GRANT {secret} TO {u}; GRANT {u} TO {accomplice}; RESET ROLE;",
        u = ident(u),
        admin = ident(ADMIN)
    );

    provisioner
        .activate(&target, &user, &roles(&[&gate]))
        .await?;
    assert_eq!(attributes(env, u)?, clean(true), "created clean");
    as_user(env, u, &env.db, &tamper(&env.db)).await?;
    env.pg.psql_super(&gained)?;
    assert_ne!(attributes(env, u)?, clean(true));
    assert_eq!(settings(env, u)?, "2");
    assert_eq!(memberships(env, u)?, set(&[MARKER_ROLE, &gate, &secret]));
    assert_eq!(members_of(env, u)?, set(&[&accomplice]));

    // Teardown.
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Locked
    );
    assert_eq!(attributes(env, u)?, clean(false));
    assert_eq!(settings(env, u)?, "0");
    assert_eq!(memberships(env, u)?, set(&[MARKER_ROLE]));
    assert_eq!(members_of(env, u)?, set(&[]));

    // Reactivation.
    assert_eq!(
        provisioner
            .activate(&target, &user, &roles(&[&gate]))
            .await?,
        ActivateOutcome::Reactivated
    );
    assert_eq!(attributes(env, u)?, clean(true));
    assert_eq!(memberships(env, u)?, set(&[MARKER_ROLE, &gate]));

    // The same again, then a crash: no teardown, the next activation cleans up.
    as_user(env, u, &env.db, &tamper(&env.db)).await?;
    env.pg.psql_super(&gained)?;
    assert_eq!(
        provisioner
            .activate(&target, &user, &roles(&[&gate]))
            .await?,
        ActivateOutcome::Reactivated
    );
    assert_eq!(attributes(env, u)?, clean(true));
    assert_eq!(settings(env, u)?, "0");
    assert_eq!(memberships(env, u)?, set(&[MARKER_ROLE, &gate]));
    assert_eq!(members_of(env, u)?, set(&[]));
    Ok(())
}

/// A role a superuser granted to a managed user, although the admin holds it WITH ADMIN
/// OPTION: PostgreSQL 15 and older let the admin revoke it; from 16 only the grantor (or a
/// role with its privileges) can, so the user is refused as not clean, with no GRANT offered
/// as a fix that would not help.
#[tokio::test]
async fn a_role_a_superuser_granted_is_stripped_before_16_and_refuses_the_user_from_16(
) -> Result<()> {
    let env = env();
    let provisioner = quick();
    let target = target(env);
    let user = db_user_name(&unique_name("granted"));
    let u = user.as_str();
    let extra = ident(&unique_name("extra"));
    provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await?;
    env.pg.psql_super(&format!(
        "CREATE ROLE {extra}; GRANT {extra} TO {admin} WITH ADMIN OPTION; GRANT {extra} TO {u}",
        admin = ident(ADMIN),
        u = ident(u)
    ))?;

    let teardown = provisioner
        .deactivate(&target, &user, TeardownMode::Keep)
        .await;
    let activation = provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await;
    if env.pg.major_version() < 16 {
        assert_eq!(teardown?, DeactivateOutcome::Locked);
        assert_eq!(activation?, ActivateOutcome::Reactivated);
        assert_eq!(memberships(env, u)?, set(&[MARKER_ROLE, "reader"]));
    } else {
        for refused in [teardown.err(), activation.err()] {
            let refused = refused.context("16+: the user must be refused")?;
            assert!(
                matches!(refused, ProvisionError::UserNotClean { .. }),
                "{refused:?}"
            );
            assert!(!refused.to_string().contains("GRANT"), "{refused}");
        }
        assert_eq!(can_login(env, u)?, Some(false), "locked by the teardown");
        // Locked; what the refused clean slate could not undo is left for a superuser.
        assert!(memberships(env, u)?.contains(&unquote(&extra)));
    }
    Ok(())
}

fn unquote(quoted: &str) -> String {
    quoted.trim_matches('"').replace("\"\"", "\"")
}

#[tokio::test]
async fn a_user_with_an_attribute_the_admin_cannot_remove_is_refused_and_stays_locked() -> Result<()>
{
    let env = env();
    let provisioner = quick();
    let target = target(env);
    let user = db_user_name(&unique_name("bypass"));
    let u = user.as_str();
    provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await?;
    env.pg
        .psql_super(&format!("ALTER ROLE {} BYPASSRLS", ident(u)))?;

    let refused = provisioner
        .deactivate(&target, &user, TeardownMode::Keep)
        .await;
    assert!(
        matches!(refused, Err(ProvisionError::UserNotClean { .. })),
        "{refused:?}"
    );
    // The first step of teardown (no more logins) holds.
    assert_eq!(can_login(env, u)?, Some(false));
    let refused = provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await
        .err()
        .context("a user with BYPASSRLS must not be handed out")?;
    assert!(
        matches!(refused, ProvisionError::UserNotClean { .. }),
        "{refused:?}"
    );
    assert_eq!(can_login(env, u)?, Some(false));
    Ok(())
}

/// Activation of a fresh user with `requested` must fail with [`ProvisionError::RoleForbidden`]
/// naming `role`, create nothing and grant nothing.
async fn assert_forbidden(
    provisioner: &PgProvisioner,
    target: &AdminTarget,
    requested: &[&str],
    role: &str,
) -> Result<String> {
    let env = env();
    let user = db_user_name(&unique_name("climber"));
    let members_before = members_of(env, role)?;
    let refused = provisioner
        .activate(target, &user, &roles(requested))
        .await
        .err()
        .with_context(|| format!("{requested:?} must be refused"))?;
    match &refused {
        ProvisionError::RoleForbidden { role: named, .. } => assert_eq!(named, role),
        other => panic!("{requested:?}: unexpected error {other:?}"),
    }
    let text = refused.to_string();
    assert!(text.contains(&format!("\"{role}\"")), "{text}");
    assert_eq!(can_login(env, user.as_str())?, None, "{requested:?}");
    // Other tests create managed users (members of the marker) meanwhile.
    if role != MARKER_ROLE {
        assert_eq!(members_of(env, role)?, members_before, "{requested:?}");
    }
    Ok(text)
}

#[tokio::test]
async fn roles_that_would_lift_a_user_above_its_db_roles_are_never_granted() -> Result<()> {
    let env = env();
    let provisioner = quick();
    let target = target(env);
    let other_user = db_user_name(&unique_name("colleague"));
    provisioner
        .activate(&target, &other_user, &roles(&["reader"]))
        .await?;
    let su = unique_name("su");
    let cr = unique_name("cr");
    let ops = unique_name("ops");
    let dw_role = format!("dw-role-{}", unique_name("x"));
    env.pg.psql_super(&format!(
        "CREATE ROLE {su} SUPERUSER; CREATE ROLE {cr} CREATEROLE; CREATE ROLE {ops}; \
         GRANT {su} TO {ops}; CREATE ROLE {dw};",
        dw = ident(&dw_role),
    ))?;

    let text = assert_forbidden(&provisioner, &target, &["reader", ADMIN], ADMIN).await?;
    assert!(text.ends_with("it is the admin user"), "{text}");
    assert_forbidden(&provisioner, &target, &[MARKER_ROLE], MARKER_ROLE).await?;
    let text = assert_forbidden(
        &provisioner,
        &target,
        &[other_user.as_str()],
        other_user.as_str(),
    )
    .await?;
    assert!(text.ends_with("a user managed by dbward"), "{text}");
    assert_forbidden(&provisioner, &target, &[&dw_role], &dw_role).await?;
    let text = assert_forbidden(&provisioner, &target, &["reader", &su], &su).await?;
    assert!(text.ends_with("it is a superuser role"), "{text}");
    assert_forbidden(&provisioner, &target, &[&cr], &cr).await?;
    // Through membership: ops can SET ROLE to a superuser role.
    let text = assert_forbidden(&provisioner, &target, &[&ops], &ops).await?;
    assert!(
        text.ends_with(&format!("it is a member of {su}, a superuser role")),
        "{text}"
    );
    let text = assert_forbidden(
        &provisioner,
        &target,
        &["pg_execute_server_program"],
        "pg_execute_server_program",
    )
    .await?;
    assert!(text.contains("predefined"), "{text}");
    assert_forbidden(&provisioner, &target, &["pg_monitor"], "pg_monitor").await?;

    // The other managed user and the admin are as they were.
    assert_eq!(
        memberships(env, other_user.as_str())?,
        set(&[MARKER_ROLE, "reader"])
    );
    Ok(())
}

#[tokio::test]
async fn predefined_roles_are_granted_only_when_the_db_resource_allows_them() -> Result<()> {
    let env = env();
    // A dedicated admin: holding pg_execute_server_program must not leak to other tests.
    let admin = unique_name("predef_admin");
    let monitoring = unique_name("monitoring");
    env.pg.psql_super(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE; \
         GRANT pg_execute_server_program TO {admin} WITH ADMIN OPTION; \
         CREATE ROLE {monitoring}; GRANT pg_monitor TO {monitoring}; \
         GRANT {monitoring} TO {admin} WITH ADMIN OPTION;"
    ))?;
    grant_marker_to(env, &admin)?;
    let provisioner = quick();
    let mut target = target_for(env, &admin, &env.db);

    assert_forbidden(
        &provisioner,
        &target,
        &["pg_execute_server_program"],
        "pg_execute_server_program",
    )
    .await?;
    let text = assert_forbidden(&provisioner, &target, &[&monitoring], &monitoring).await?;
    assert!(text.contains("it is a member of pg_"), "{text}");

    target.allowed_predefined_roles = vec!["pg_execute_server_program".into(), "pg_monitor".into()];
    let user = db_user_name(&unique_name("operator"));
    provisioner
        .activate(
            &target,
            &user,
            &roles(&["pg_execute_server_program", &monitoring]),
        )
        .await?;
    assert_eq!(
        memberships(env, user.as_str())?,
        set(&[MARKER_ROLE, "pg_execute_server_program", &monitoring])
    );
    // pg_monitor is allowed, but the admin does not hold it WITH ADMIN OPTION.
    let refused = provisioner
        .activate(
            &target,
            &db_user_name(&unique_name("mon")),
            &roles(&["pg_monitor"]),
        )
        .await
        .err()
        .context("no ADMIN OPTION on pg_monitor")?;
    assert!(
        matches!(&refused, ProvisionError::AdminCannotGrant { role, .. } if role == "pg_monitor"),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_role_the_admin_does_not_hold_with_admin_option_is_refused_before_anything_changes(
) -> Result<()> {
    let env = env();
    let provisioner = quick();
    let target = target(env);
    let plain = unique_name("plain");
    env.pg.psql_super(&format!("CREATE ROLE {plain}"))?;
    let user = db_user_name(&unique_name("hopeful"));

    let refused = provisioner
        .activate(&target, &user, &roles(&["reader", &plain]))
        .await
        .err()
        .context("no ADMIN OPTION must be refused")?;
    match &refused {
        ProvisionError::AdminCannotGrant { role, fix, .. } => {
            assert_eq!(role, &plain);
            assert_eq!(
                fix,
                &format!("GRANT \"{plain}\" TO \"{ADMIN}\" WITH ADMIN OPTION;")
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(can_login(env, user.as_str())?, None);
    assert_eq!(members_of(env, &plain)?, set(&[]));

    // An existing, locked user is left exactly as it was.
    provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await?;
    provisioner
        .deactivate(&target, &user, TeardownMode::Keep)
        .await?;
    let refused = provisioner
        .activate(&target, &user, &roles(&["writer", &plain]))
        .await;
    assert!(
        matches!(refused, Err(ProvisionError::AdminCannotGrant { .. })),
        "{refused:?}"
    );
    assert_eq!(can_login(env, user.as_str())?, Some(false));
    assert_eq!(memberships(env, user.as_str())?, set(&[MARKER_ROLE]));

    // The preflight names the missing grant on every PostgreSQL version.
    let findings = provisioner
        .preflight(&target, &roles(&["reader", &plain, MARKER_ROLE]))
        .await?;
    let fixes: Vec<&str> = findings.iter().map(|f| f.fix.as_str()).collect();
    assert_eq!(
        fixes,
        vec![
            format!("remove \"{MARKER_ROLE}\" from the db_roles of dbward roles"),
            format!("GRANT \"{plain}\" TO \"{ADMIN}\" WITH ADMIN OPTION;"),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn marker_members_with_admin_option_and_the_admin_itself_are_not_managed() -> Result<()> {
    let env = env();
    // A dedicated admin that, like the admin on PostgreSQL 16+, holds the marker WITH ADMIN
    // OPTION, and a DBA who administers the marker as well.
    let admin = unique_name("marker_admin");
    let dba = unique_name("dba");
    env.pg.psql_super(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE; CREATE ROLE {dba} LOGIN; \
         GRANT reader TO {admin} WITH ADMIN OPTION; GRANT reader TO {dba};"
    ))?;
    grant_marker_to(env, &admin)?;
    grant_marker_to(env, &dba)?;
    let provisioner = quick();
    let target = target_for(env, &admin, &env.db);
    // A real user for the reconciler to find.
    let user = db_user_name(&unique_name("managed"));
    provisioner
        .activate(&target, &user, &roles(&["reader"]))
        .await?;

    let listed = provisioner.list_active_managed(&target).await?;
    assert!(listed.contains(&user.as_str().to_owned()), "{listed:?}");
    assert!(!listed.contains(&dba), "{listed:?}");
    assert!(!listed.contains(&admin), "{listed:?}");

    for name in [dba.as_str(), admin.as_str()] {
        let before = (can_login(env, name)?, memberships(env, name)?);
        let other = DbUserName::new(name);
        let state = provisioner
            .user_state(&target, &other)
            .await?
            .context("exists")?;
        assert!(!state.managed, "{name}");
        let refused = provisioner
            .activate(&target, &other, &roles(&["reader"]))
            .await;
        assert!(
            matches!(refused, Err(ProvisionError::UserNotManaged { .. })),
            "{name}: {refused:?}"
        );
        for mode in [TeardownMode::Keep, TeardownMode::Drop] {
            let refused = provisioner.deactivate(&target, &other, mode).await;
            assert!(
                matches!(refused, Err(ProvisionError::UserNotManaged { .. })),
                "{name}: {refused:?}"
            );
        }
        assert_eq!((can_login(env, name)?, memberships(env, name)?), before);
    }
    // Neither may be granted as a db role either.
    assert_forbidden(&provisioner, &target, &[&dba], &dba).await?;
    Ok(())
}

// Database Access Controls (PROVISIONING.md §6): table privileges applied and taken away.

/// A database of its own with `public.orders` and `sales.invoices`, owned by a role that is
/// neither the admin nor a provisioned user. The admin may grant SELECT and INSERT on
/// `orders` (WITH GRANT OPTION) and nothing on `sales`.
fn permissions_db(env: &Env) -> Result<String> {
    let db = unique_name("perms");
    let owner = unique_name("tables_owner");
    env.pg.psql_super(&format!(
        "CREATE ROLE {owner}; CREATE DATABASE {db} OWNER {owner};"
    ))?;
    env.pg.psql_super_in(
        &db,
        &format!(
            r#"SET ROLE {owner};
               CREATE TABLE public.orders (id int);
               INSERT INTO public.orders VALUES (1), (2);
               CREATE SCHEMA sales;
               CREATE TABLE sales.invoices (id int);
               GRANT SELECT, INSERT ON public.orders TO "{ADMIN}" WITH GRANT OPTION;"#
        ),
    )?;
    Ok(db)
}

fn table_privileges_in(env: &Env, db: &str, user: &str) -> Result<BTreeSet<String>> {
    let out = env.pg.psql_super_in(
        db,
        &format!(
            "SELECT n.nspname || '.' || c.relname || ':' || a.privilege_type \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, \
             aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee \
             WHERE r.rolname = {}",
            lit(user)
        ),
    )?;
    Ok(out
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

fn privilege(schema: &str, table: &str, name: &str) -> dbward_provision::postgres::TablePrivilege {
    dbward_provision::postgres::TablePrivilege {
        table: dbward_provision::postgres::TableName {
            schema: schema.into(),
            name: table.into(),
        },
        privilege: name.into(),
    }
}

#[tokio::test]
async fn table_privileges_are_exactly_the_computed_set_and_revoked_before_drop() -> Result<()> {
    let env = env();
    let db = permissions_db(env)?;
    let target = target_for(env, ADMIN, &db);
    let user = db_user_name(&unique_name("perm"));
    let provisioner = quick();
    provisioner.activate(&target, &user, &[]).await?;

    let tables = provisioner.list_tables(&target).await?;
    let names: BTreeSet<String> = tables
        .iter()
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    assert_eq!(names, set(&["public.orders", "sales.invoices"]));

    let select = BTreeSet::from([privilege("public", "orders", "SELECT")]);
    provisioner
        .set_table_privileges(&target, &user, &select)
        .await?;
    assert_eq!(
        table_privileges_in(env, &db, user.as_str())?,
        set(&["public.orders:SELECT"])
    );
    let session = login(env, user.as_str(), &db).await?;
    let rows = session
        .client
        .query_one("SELECT count(*) FROM public.orders", &[])
        .await?;
    assert_eq!(rows.get::<_, i64>(0), 2);
    let insert = session
        .client
        .execute("INSERT INTO public.orders VALUES (3)", &[])
        .await;
    assert_eq!(
        insert.err().and_then(|e| e.code().cloned()),
        Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    session.close().await;
    assert_eq!(
        provisioner.table_privileges(&target, &user).await?,
        select,
        "what the provisioner reads back is what it granted"
    );

    // A new set replaces the old one entirely.
    let insert_only = BTreeSet::from([privilege("public", "orders", "INSERT")]);
    provisioner
        .set_table_privileges(&target, &user, &insert_only)
        .await?;
    assert_eq!(
        table_privileges_in(env, &db, user.as_str())?,
        set(&["public.orders:INSERT"])
    );

    // Revoked at teardown, the user has nothing that keeps DROP ROLE from working.
    assert_eq!(
        provisioner.revoke_table_privileges(&target, &user).await?,
        1
    );
    assert!(table_privileges_in(env, &db, user.as_str())?.is_empty());
    let outcome = provisioner
        .deactivate(&target, &user, TeardownMode::Drop)
        .await?;
    assert_eq!(outcome, DeactivateOutcome::Dropped);
    assert_eq!(can_login(env, user.as_str())?, None);
    Ok(())
}

#[tokio::test]
async fn privileges_the_admin_cannot_grant_are_reported_and_the_rest_granted() -> Result<()> {
    let env = env();
    let db = permissions_db(env)?;
    let target = target_for(env, ADMIN, &db);
    let user = db_user_name(&unique_name("perm_partial"));
    let provisioner = quick();
    provisioner.activate(&target, &user, &[]).await?;

    let wanted = BTreeSet::from([
        privilege("public", "orders", "SELECT"),
        privilege("public", "orders", "UPDATE"),
        privilege("sales", "invoices", "SELECT"),
    ]);
    let skipped = provisioner
        .set_table_privileges(&target, &user, &wanted)
        .await?;

    assert_eq!(
        skipped,
        [
            "UPDATE on TABLE public.orders",
            "SELECT on TABLE sales.invoices"
        ]
    );
    assert_eq!(
        table_privileges_in(env, &db, user.as_str())?,
        set(&["public.orders:SELECT"])
    );
    // Nothing was granted in `sales`: no USAGE either (its functions and sequences stay shut).
    let usage = env.pg.psql_super_in(
        &db,
        &format!(
            "SELECT has_schema_privilege({}, 'sales', 'USAGE')",
            lit(user.as_str())
        ),
    )?;
    assert_eq!(usage, "f");
    Ok(())
}

/// Grants other users made to a provisioned user (on a temporary table, on a table of their
/// own) are not the admin's to revoke: they neither make setting nor revoking fail, and what
/// the admin granted is still taken back in full.
#[tokio::test]
async fn grants_made_by_other_users_neither_block_nor_outlast_the_admins_revocation() -> Result<()>
{
    let env = env();
    let db = permissions_db(env)?;
    let target = target_for(env, ADMIN, &db);
    let provisioner = quick();
    let victim = db_user_name(&unique_name("victim"));
    let attacker = db_user_name(&unique_name("attacker"));
    provisioner.activate(&target, &victim, &[]).await?;
    provisioner.activate(&target, &attacker, &[]).await?;
    // The attacker owns a table (left from an earlier session) and makes grants on it and on
    // a temporary table of its live session, to the victim and to itself.
    env.pg.psql_super_in(
        &db,
        &format!(
            "CREATE TABLE public.{t} (id int); ALTER TABLE public.{t} OWNER TO {a};",
            t = ident(&format!("own_{}", attacker.as_str())),
            a = ident(attacker.as_str())
        ),
    )?;
    let session = login(env, attacker.as_str(), &db).await?;
    session
        .client
        .batch_execute(&format!(
            "CREATE TEMP TABLE x (i int); GRANT SELECT ON x TO {v};
             GRANT SELECT ON public.{t} TO {v}; GRANT SELECT ON public.{t} TO {a};",
            v = ident(victim.as_str()),
            a = ident(attacker.as_str()),
            t = ident(&format!("own_{}", attacker.as_str())),
        ))
        .await?;

    let select = BTreeSet::from([privilege("public", "orders", "SELECT")]);
    for user in [&victim, &attacker] {
        let skipped = provisioner
            .set_table_privileges(&target, user, &select)
            .await?;
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            provisioner.table_privileges(&target, user).await?,
            select,
            "only the admin's grants count as the user's table permissions"
        );
    }
    for user in [&victim, &attacker] {
        assert_eq!(provisioner.revoke_table_privileges(&target, user).await?, 1);
        assert!(
            !table_privileges_in(env, &db, user.as_str())?.contains("public.orders:SELECT"),
            "the admin's grant is gone"
        );
    }
    session.close().await;
    Ok(())
}

#[tokio::test]
async fn table_privileges_are_never_given_to_a_user_dbward_did_not_create() -> Result<()> {
    let env = env();
    let db = permissions_db(env)?;
    let target = target_for(env, ADMIN, &db);
    let name = unique_name("dba_perm");
    env.pg.psql_super(&format!("CREATE ROLE {name} LOGIN"))?;
    let user = DbUserName::new(name.clone());
    let select = BTreeSet::from([privilege("public", "orders", "SELECT")]);

    let refused = quick().set_table_privileges(&target, &user, &select).await;

    assert!(
        matches!(refused, Err(ProvisionError::UserNotManaged { .. })),
        "{refused:?}"
    );
    assert!(table_privileges_in(env, &db, &name)?.is_empty());
    Ok(())
}
