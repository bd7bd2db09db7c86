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
                 GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO '{ADMIN}'@'%';
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
        .arg("--default-character-set=utf8mb4")
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
        DeactivateOutcome::Kept
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

/// A JSON field of `user`@`%` in mysql.global_priv ("" when absent).
fn priv_field(env: &Env, user: &str, path: &str) -> String {
    root(
        env,
        &format!(
            "SELECT IFNULL(JSON_UNQUOTE(JSON_EXTRACT(Priv, '{path}')), '') FROM mysql.global_priv \
             WHERE User = '{user}' AND Host = '%'"
        ),
    )
}

/// Privilege rows held directly by `grantee` (user or role, any host) in the grant tables.
fn direct_privileges(env: &Env, grantee: &str) -> String {
    root(
        env,
        &format!(
            "SELECT (SELECT COUNT(*) FROM mysql.db WHERE User = '{grantee}') \
             + (SELECT COUNT(*) FROM mysql.tables_priv WHERE User = '{grantee}') \
             + (SELECT COUNT(*) FROM mysql.columns_priv WHERE User = '{grantee}') \
             + (SELECT COUNT(*) FROM mysql.procs_priv WHERE User = '{grantee}') \
             + (SELECT COUNT(*) FROM mysql.global_priv WHERE User = '{grantee}' \
                AND JSON_VALUE(Priv, '$.access') <> 0)"
        ),
    )
}

/// Asserts the account is exactly what dbward makes of it: no password and one
/// authentication method, `REQUIRE SUBJECT '/CN=<user>'` and nothing else, no resource
/// limits, no privilege of its own or on its all-in-one role, the given roles.
fn assert_clean_slate(env: &Env, user: &str, roles: &str) {
    for (path, wanted) in [
        ("$.plugin", "mysql_native_password"),
        ("$.authentication_string", ""),
        ("$.auth_or", ""),
        ("$.ssl_type", "3"),
        ("$.ssl_cipher", ""),
        ("$.x509_issuer", ""),
        ("$.x509_subject", &format!("/CN={user}")),
        ("$.access", "0"),
    ] {
        assert_eq!(priv_field(env, user, path), wanted, "{path} of {user}");
    }
    for limit in [
        "$.max_questions",
        "$.max_updates",
        "$.max_connections",
        "$.max_user_connections",
    ] {
        assert!(
            ["", "0"].contains(&priv_field(env, user, limit).as_str()),
            "{limit} of {user} is {}",
            priv_field(env, user, limit)
        );
    }
    let statement_time = priv_field(env, user, "$.max_statement_time");
    assert!(
        statement_time.is_empty() || statement_time.parse::<f64>() == Ok(0.0),
        "max_statement_time {statement_time}"
    );
    assert!(
        ["", "false"].contains(&priv_field(env, user, "$.password_expired").as_str()),
        "password expired"
    );
    assert_eq!(direct_privileges(env, user), "0", "privileges of {user}");
    let role = format!("dw-role-{user}");
    assert_eq!(direct_privileges(env, &role), "0", "privileges of {role}");
    assert_eq!(granted(env, user, "%"), roles, "roles of {user}");
}

#[tokio::test]
async fn what_a_user_did_to_its_account_never_survives_teardown_or_reactivation() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    let name = unique_name("slate");
    let user = mariadb_user_name(&name);
    let role = all_in_one_role(&user);
    provisioner
        .activate(&target, &user, &name, &roles(&["reader"]))
        .await?;
    assert_clean_slate(env, &name, &format!("{MARKER_ROLE},{role}"));

    // What the user may do to itself without any privilege...
    as_user(
        env,
        &name,
        "SET PASSWORD = PASSWORD('chosen by the user'); SET DEFAULT ROLE NONE",
    )?;
    // ...and what it could do with privileges gained through a role.
    let extra = format!("extra_{name}");
    root(
        env,
        &format!(
            "CREATE ROLE `{extra}`;
             GRANT `{extra}` TO '{name}'@'%';
             GRANT SELECT, INSERT ON appdb.* TO '{name}'@'%';
             GRANT RELOAD ON *.* TO '{name}'@'%';
             GRANT SELECT ON appdb.t TO '{name}'@'%';
             GRANT SELECT ON appdb.* TO `{role}`;
             GRANT PROCESS ON *.* TO `{role}`;
             ALTER USER '{name}'@'%' REQUIRE SUBJECT '/CN=someone-else' AND ISSUER '/CN=ca'
               WITH MAX_QUERIES_PER_HOUR 7 MAX_USER_CONNECTIONS 2 MAX_STATEMENT_TIME 3;"
        ),
    );
    assert!(
        !priv_field(env, &name, "$.authentication_string").is_empty(),
        "the user set a password"
    );

    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Locked
    );
    assert_clean_slate(env, &name, MARKER_ROLE);
    assert_eq!(locked(env, &name), "true");
    assert_eq!(priv_field(env, &name, "$.default_role"), "");

    // The user gets its password and limits back before the next activation.
    root(
        env,
        &format!(
            "SET PASSWORD FOR '{name}'@'%' = PASSWORD('again');
             GRANT DELETE ON appdb.* TO '{name}'@'%';
             ALTER USER '{name}'@'%' WITH MAX_UPDATES_PER_HOUR 9;"
        ),
    );
    assert_eq!(
        provisioner
            .activate(&target, &user, &name, &roles(&["reader"]))
            .await?,
        ActivateOutcome::Reactivated
    );
    assert_clean_slate(env, &name, &format!("{MARKER_ROLE},{role}"));
    assert_eq!(priv_field(env, &name, "$.default_role"), role);
    assert_eq!(granted(env, &role, ""), "reader");
    // The certificate alone logs in again: no password is asked for.
    assert_eq!(
        as_user(env, &name, "SELECT current_user(), current_role()")?,
        format!("{name}@%\t{role}")
    );
    Ok(())
}

#[tokio::test]
async fn roles_dbward_must_never_grant_are_refused_by_name_and_nothing_is_created() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = target(env);
    // Another person's user and all-in-one role.
    let bob = unique_name("bob");
    let bob_user = mariadb_user_name(&bob);
    let bob_role = all_in_one_role(&bob_user);
    provisioner
        .activate(&target, &bob_user, &bob, &roles(&["reader"]))
        .await?;
    // Roles with superuser-like power, all administered by the admin.
    let n = unique_name("r");
    let superuser = format!("super_{n}");
    let wrapper = format!("wrap_{n}");
    let grant_tables = format!("grants_{n}");
    let account_admin = format!("accounts_{n}");
    root(
        env,
        &format!(
            "CREATE ROLE `{superuser}`;
             GRANT SUPER ON *.* TO `{superuser}`;
             CREATE ROLE `{wrapper}`;
             GRANT `{superuser}` TO `{wrapper}`;
             CREATE ROLE `{grant_tables}`;
             GRANT UPDATE ON mysql.* TO `{grant_tables}`;
             CREATE ROLE `{account_admin}`;
             GRANT CREATE USER ON *.* TO `{account_admin}`;
             GRANT `{superuser}` TO '{ADMIN}'@'%' WITH ADMIN OPTION;
             GRANT `{wrapper}` TO '{ADMIN}'@'%' WITH ADMIN OPTION;
             GRANT `{grant_tables}` TO '{ADMIN}'@'%' WITH ADMIN OPTION;
             GRANT `{account_admin}` TO '{ADMIN}'@'%' WITH ADMIN OPTION;"
        ),
    );
    let alice = unique_name("alice");
    let alice_user = mariadb_user_name(&alice);
    for forbidden in [
        bob_role.as_str(),
        ADMIN,
        MARKER_ROLE,
        bob.as_str(),
        superuser.as_str(),
        wrapper.as_str(),
        grant_tables.as_str(),
        account_admin.as_str(),
    ] {
        let refused = provisioner
            .activate(&target, &alice_user, &alice, &roles(&["reader", forbidden]))
            .await;
        assert!(
            matches!(&refused, Err(ProvisionError::RoleForbidden { role, .. }) if role == forbidden),
            "{forbidden}: {refused:?}"
        );
        assert!(
            refused.unwrap_err().to_string().contains(forbidden),
            "the error names the role"
        );
        assert_eq!(
            root(
                env,
                &format!(
                    "SELECT COUNT(*) FROM mysql.global_priv WHERE User IN ('{alice}', 'dw-role-{alice}')"
                )
            ),
            "0",
            "nothing created for {forbidden}"
        );
        assert_eq!(
            root(
                env,
                &format!(
                    "SELECT COUNT(*) FROM mysql.roles_mapping WHERE User IN ('{alice}', 'dw-role-{alice}')"
                )
            ),
            "0",
            "{forbidden} granted to nobody"
        );
    }
    assert_eq!(granted(env, &bob_role, ""), "reader");
    assert_eq!(granted(env, &bob, "%"), format!("{MARKER_ROLE},{bob_role}"));
    // An ordinary role is still granted.
    assert_eq!(
        provisioner
            .activate(&target, &alice_user, &alice, &roles(&["reader"]))
            .await?,
        ActivateOutcome::Created
    );
    Ok(())
}

/// A schema in latin1, the server default of many installations, holding a
/// `user_attributes` table as earlier versions created it there.
fn latin1_target(env: &Env) -> AdminTarget {
    let schema = unique_name("dw_latin1");
    root(
        env,
        &format!(
            "CREATE DATABASE `{schema}` CHARACTER SET latin1;
             GRANT ALL ON `{schema}`.* TO '{ADMIN}'@'%';
             CREATE TABLE `{schema}`.user_attributes (
               `User` VARCHAR(80) NOT NULL PRIMARY KEY, `Attributes` JSON NOT NULL);
             INSERT INTO `{schema}`.user_attributes VALUES ('earlier', '{{\"user\": \"earlier\"}}');"
        ),
    );
    AdminTarget {
        database: schema,
        ..target(env)
    }
}

#[tokio::test]
async fn unicode_names_are_provisioned_and_log_in_with_a_latin1_default_schema() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let target = latin1_target(env);
    let name = format!("jürgen 名前 {}", unique_name("u"));
    let user = mariadb_user_name(&name);
    assert_eq!(user.as_str(), name);
    let activated = provisioner
        .activate(&target, &user, &name, &roles(&["reader"]))
        .await;
    assert!(
        matches!(activated, Ok(ActivateOutcome::Created)),
        "{activated:?}"
    );
    assert_eq!(
        as_user(env, &name, "SELECT current_user(), current_role()")?,
        format!("{name}@%\t{}", all_in_one_role(&user))
    );
    let schema = &target.database;
    assert_eq!(
        root(
            env,
            &format!(
                "SELECT JSON_VALUE(Attributes, '$.user') FROM `{schema}`.user_attributes WHERE User = '{name}'"
            )
        ),
        name
    );
    assert_eq!(
        root(
            env,
            &format!(
                "SELECT CONCAT(TABLE_COLLATION, ' ', (SELECT COUNT(*) FROM `{schema}`.user_attributes WHERE User = 'earlier')) \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{schema}' AND TABLE_NAME = 'user_attributes'"
            )
        ),
        "utf8mb4_bin 1",
        "the table was converted, its rows kept"
    );
    assert_eq!(
        provisioner
            .deactivate(&target, &user, TeardownMode::Keep)
            .await?,
        DeactivateOutcome::Locked
    );
    assert_eq!(locked(env, &name), "true");
    Ok(())
}

#[tokio::test]
async fn an_activation_that_fails_midway_leaves_no_user_or_role_behind() -> Result<()> {
    let env = env();
    let provisioner = MariaProvisioner::new();
    let schema = unique_name("dw_failing");
    let name = unique_name("halfmade");
    // Recording the name fails after the user was created.
    root(
        env,
        &format!(
            "CREATE DATABASE `{schema}`;
             GRANT ALL ON `{schema}`.* TO '{ADMIN}'@'%';
             CREATE TABLE `{schema}`.user_attributes (
               `User` VARCHAR(80) NOT NULL PRIMARY KEY, `Attributes` JSON NOT NULL)
               CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
             CREATE TRIGGER `{schema}`.refuse BEFORE INSERT ON `{schema}`.user_attributes
               FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused';"
        ),
    );
    let target = AdminTarget {
        database: schema.clone(),
        ..target(env)
    };
    let user = mariadb_user_name(&name);
    let failed = provisioner
        .activate(&target, &user, &name, &roles(&["reader"]))
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        root(
            env,
            &format!(
                "SELECT COUNT(*) FROM mysql.global_priv WHERE User IN ('{name}', 'dw-role-{name}')"
            )
        ),
        "0",
        "neither the user nor its role is left"
    );
    assert_eq!(
        root(
            env,
            &format!("SELECT COUNT(*) FROM mysql.roles_mapping WHERE User IN ('{name}', 'dw-role-{name}')")
        ),
        "0"
    );
    assert_eq!(
        root(
            env,
            &format!("SELECT COUNT(*) FROM `{schema}`.user_attributes WHERE User = '{name}'")
        ),
        "0"
    );
    Ok(())
}
