//! The lifecycle core of PostgreSQL provisioning on every supported major (13–18), one server
//! per major started by the test kit in this one process: marker creation by a CREATEROLE
//! (not superuser) admin, create, keep, reactivate, the crash reconciler's path, drop with and
//! without owned objects, conflict with an unmanaged user, forbidden roles, and a second admin
//! whose needs differ by major (PostgreSQL 16+: the marker WITH ADMIN OPTION), found and fixed
//! by the preflight (`dbward db check`). db_permissions is not implemented yet and not covered.
//!
//! Majors other than the system's come from the cache `scripts/lib/fetch-pg` fills (the test
//! command runs it). Each test writes the steps it verified to
//! `$CARGO_TARGET_TMPDIR/pg-matrix/<major>`, from which `scripts/pg-matrix-table` prints the
//! README's table.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dbward_pki::{CaSet, ServerVerification};
use dbward_provision::postgres::{
    AdminTarget, MakeRustlsConnect, PgProvisioner, PgProvisionerSettings,
};
use dbward_provision::{
    db_user_name, ActivateOutcome, DeactivateOutcome, ProvisionError, TeardownMode, MARKER_ROLE,
};
use dbward_testkit::{DbServerCerts, PgServer};
use tempfile::TempDir;

const ADMIN: &str = "teleport-admin";
const DATABASE: &str = "dbward";

struct Certs {
    cas: CaSet,
    server: DbServerCerts,
    _dir: TempDir,
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let cas = CaSet::generate("dbward-matrix").expect("CAs");
        let dir = tempfile::Builder::new()
            .prefix("dwmx")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let server = DbServerCerts::from_cas(&cas, dir.path()).expect("server certificates");
        Certs {
            cas,
            server,
            _dir: dir,
        }
    })
}

/// One major's server and its checks.
struct Run {
    pg: PgServer,
    major: u32,
    provisioner: PgProvisioner,
}

impl Run {
    fn sql(&self, sql: &str) -> Result<String> {
        self.pg
            .psql_super_in(DATABASE, sql)
            .with_context(|| format!("PostgreSQL {}: {sql}", self.major))
    }

    fn target(&self, admin: &str) -> AdminTarget {
        AdminTarget {
            engine: dbward_provision::Engine::Postgres,
            host: self.pg.host.clone(),
            port: self.pg.port,
            server_name: "localhost".into(),
            client_config: client_config(admin),
            admin_user: admin.into(),
            database: DATABASE.into(),
            allowed_predefined_roles: Vec::new(),
        }
    }

    fn can_login(&self, user: &str) -> Result<Option<bool>> {
        Ok(
            match self
                .sql(&format!(
                    "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
                    lit(user)
                ))?
                .as_str()
            {
                "" => None,
                "t" => Some(true),
                "f" => Some(false),
                other => bail!("unexpected psql output {other:?}"),
            },
        )
    }

    /// Roles `user` is a direct member of, marker included.
    fn memberships(&self, user: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .sql(&format!(
                "SELECT g.rolname FROM pg_auth_members m \
                 JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
                 WHERE u.rolname = {}",
                lit(user)
            ))?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Logs in as `user` and tries `SET ROLE role`: the SQLSTATE when refused, `None` when
    /// it worked.
    async fn set_role_error(&self, user: &str, role: &str) -> Result<Option<String>> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.pg.host)
            .port(self.pg.port)
            .user(user)
            .dbname(DATABASE)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = MakeRustlsConnect::new(client_config(user), "localhost");
        let (client, connection) = config.connect(tls).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let outcome = client
            .batch_execute(&format!("SET ROLE {}", ident(role)))
            .await
            .err()
            .map(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_default());
        drop(client);
        let _ = task.await;
        Ok(outcome)
    }

    /// Logs in as `user` with a db-client certificate and returns `current_user`.
    async fn login(&self, user: &str) -> Result<String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.pg.host)
            .port(self.pg.port)
            .user(user)
            .dbname(DATABASE)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = MakeRustlsConnect::new(client_config(user), "localhost");
        let (client, connection) = config.connect(tls).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await?
            .get(0);
        drop(client);
        let _ = task.await;
        // The backend exits a moment after the client left.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {}",
            lit(user)
        ))? != "0"
        {
            if Instant::now() > deadline {
                bail!("the session of {user} is still listed");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(who)
    }
}

fn client_config(user: &str) -> Arc<rustls::ClientConfig> {
    let cas = &certs().cas;
    let (cert, key) =
        dbward_pki::issue_db_client_cert(&cas.db_client, user, Duration::from_secs(3600))
            .expect("client certificate");
    dbward_pki::client_config(
        Some(&cas.db.cert_pem),
        ServerVerification::Full,
        Some((&cert, &key)),
    )
    .expect("client config")
}

fn lit(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn roles(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The steps of the core that ran to the end, written for `scripts/pg-matrix-table`.
fn record(major: u32, version: &str, verified: &[&str]) -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pg-matrix");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(major.to_string()),
        format!("{version}\n{}\n", verified.join("\n")),
    )?;
    Ok(())
}

async fn lifecycle_core(major: u32) -> Result<()> {
    let pg = PgServer::start_major(&certs().server, major)?;
    let version = pg.psql_super("SHOW server_version")?;
    let mut verified: Vec<&str> = Vec::new();
    let run = Run {
        pg,
        major,
        provisioner: PgProvisioner::with_settings(PgProvisionerSettings {
            settle_time: Duration::from_millis(300),
            ..PgProvisionerSettings::default()
        }),
    };
    // The admin as the provisioning guide sets it up: LOGIN CREATEROLE, the db role WITH
    // ADMIN OPTION; not a superuser. The marker role does not exist yet.
    run.pg.psql_super(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE; CREATE ROLE reader; \
         GRANT reader TO {admin} WITH ADMIN OPTION; CREATE DATABASE {DATABASE};",
        admin = ident(ADMIN)
    ))?;
    let target = run.target(ADMIN);
    let p = &run.provisioner;

    assert_eq!(p.preflight(&target, &roles(&["reader"])).await?, vec![]);
    verified.push("preflight: documented setup is clean");

    // The first activation creates the marker (by the CREATEROLE admin) and the user.
    let alice = db_user_name("alice");
    let a = alice.as_str();
    assert_eq!(
        p.activate(&target, &alice, &roles(&["reader"])).await?,
        ActivateOutcome::Created
    );
    assert_eq!(run.can_login(MARKER_ROLE)?, Some(false));
    assert_eq!(run.memberships(a)?, set(&[MARKER_ROLE, "reader"]));
    assert_eq!(run.login(a).await?, a);
    // PostgreSQL 16+ makes the creator of a role its member WITH ADMIN OPTION.
    let admin_holds_marker = run.sql(&format!(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
         JOIN pg_roles u ON u.oid = m.member \
         WHERE g.rolname = {} AND u.rolname = {} AND m.admin_option",
        lit(MARKER_ROLE),
        lit(ADMIN)
    ))?;
    assert_eq!(admin_holds_marker, if major >= 16 { "1" } else { "0" });
    // From 16 on the marker membership carries no SET option: the user cannot act as the
    // marker role (objects created under it would be shared by every managed user).
    let set_marker = run.set_role_error(a, MARKER_ROLE).await?;
    if major >= 16 {
        assert_eq!(set_marker.as_deref(), Some("42501"));
        verified.push("marker membership without SET: SET ROLE to the marker refused");
    } else {
        assert_eq!(set_marker, None);
    }
    verified.push("marker created by a CREATEROLE admin");
    verified.push("create and log in");

    // Keep, then reactivate.
    let p = &run.provisioner;
    assert_eq!(
        p.deactivate(&target, &alice, TeardownMode::Keep).await?,
        DeactivateOutcome::Locked
    );
    assert_eq!(run.can_login(a)?, Some(false));
    assert_eq!(run.memberships(a)?, set(&[MARKER_ROLE]));
    assert!(run.login(a).await.is_err(), "a locked user logs in");
    assert_eq!(
        p.activate(&target, &alice, &roles(&["reader"])).await?,
        ActivateOutcome::Reactivated
    );
    assert_eq!(run.memberships(a)?, set(&[MARKER_ROLE, "reader"]));
    assert_eq!(run.login(a).await?, a);
    verified.push("keep (locked, roles revoked)");
    verified.push("reactivate");

    // A crash: the user stays active with no session; the reconciler finds and locks it.
    let p = &run.provisioner;
    assert_eq!(p.list_active_managed(&target).await?, vec![a.to_owned()]);
    assert_eq!(
        p.deactivate(&target, &alice, TeardownMode::Keep).await?,
        DeactivateOutcome::Locked
    );
    assert_eq!(p.list_active_managed(&target).await?, Vec::<String>::new());
    assert_eq!(run.can_login(a)?, Some(false));
    verified.push("crash reconciler (list active, deactivate)");

    // Drop: an idle user goes; one that owns a table is locked instead.
    let bob = db_user_name("bob");
    let owner = db_user_name("owner");
    p.activate(&target, &bob, &roles(&["reader"])).await?;
    p.activate(&target, &owner, &[]).await?;
    run.sql(&format!(
        "CREATE TABLE owned (x int); ALTER TABLE owned OWNER TO {}",
        ident(owner.as_str())
    ))?;
    let p = &run.provisioner;
    assert_eq!(
        p.deactivate(&target, &bob, TeardownMode::Drop).await?,
        DeactivateOutcome::Dropped
    );
    assert_eq!(run.can_login(bob.as_str())?, None);
    assert_eq!(
        p.deactivate(&target, &owner, TeardownMode::Drop).await?,
        DeactivateOutcome::DropFellBackToLock
    );
    assert_eq!(run.can_login(owner.as_str())?, Some(false));
    assert_eq!(
        run.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'")?,
        owner.as_str()
    );
    verified.push("drop, and lock instead when the user owns objects");

    // A user that exists and is not managed is refused and left as it is.
    run.sql("CREATE ROLE carol LOGIN")?;
    let p = &run.provisioner;
    let refused = p
        .activate(&target, &db_user_name("carol"), &roles(&["reader"]))
        .await
        .err()
        .context("an unmanaged user must be refused")?;
    assert!(
        matches!(refused, ProvisionError::UserNotManaged { .. }),
        "{refused:?}"
    );
    assert_eq!(run.can_login("carol")?, Some(true));
    assert_eq!(run.memberships("carol")?, set(&[]));
    verified.push("conflict with an unmanaged user");

    // Roles that would lift a user above its db roles are never granted.
    for forbidden in [ADMIN, "pg_execute_server_program", MARKER_ROLE] {
        let climber = db_user_name(&format!("climber-{}", forbidden.len()));
        let refused = p
            .activate(&target, &climber, &roles(&["reader", forbidden]))
            .await
            .err()
            .with_context(|| format!("{forbidden} must be refused"))?;
        match refused {
            ProvisionError::RoleForbidden { role, .. } => assert_eq!(role, forbidden),
            other => return Err(anyhow!("{forbidden}: unexpected {other:?}")),
        }
        assert_eq!(run.can_login(climber.as_str())?, None);
    }
    verified.push("forbidden roles (admin, pg_execute_server_program, marker)");

    // A second admin, set up like the first, after the marker exists: from PostgreSQL 16
    // CREATEROLE alone no longer lets it grant the marker another admin created. The
    // preflight says so on those majors only, with the fix; the fix works.
    let second = "second-admin";
    run.pg.psql_super(&format!(
        "CREATE ROLE {s} LOGIN CREATEROLE; GRANT reader TO {s} WITH ADMIN OPTION;",
        s = ident(second)
    ))?;
    let target2 = run.target(second);
    let p = &run.provisioner;
    let findings = p.preflight(&target2, &roles(&["reader"])).await?;
    let fixes: Vec<String> = findings.iter().map(|f| f.fix.clone()).collect();
    let marker_fix = format!(
        "GRANT {} TO {} WITH ADMIN OPTION;",
        ident(MARKER_ROLE),
        ident(second)
    );
    let dave = db_user_name("dave");
    if major >= 16 {
        assert_eq!(fixes, vec![marker_fix.clone()]);
        let refused = p
            .activate(&target2, &dave, &roles(&["reader"]))
            .await
            .err()
            .context("PostgreSQL 16+: the marker cannot be granted without ADMIN OPTION")?;
        assert!(
            matches!(refused, ProvisionError::AdminCannotGrant { .. }),
            "{refused:?}"
        );
        assert!(refused.to_string().contains(&marker_fix), "{refused}");
        assert_eq!(run.can_login(dave.as_str())?, None, "nothing left behind");
        run.sql(&marker_fix)?;
        assert_eq!(p.preflight(&target2, &roles(&["reader"])).await?, vec![]);
        verified.push("16+: preflight prints GRANT marker WITH ADMIN OPTION, which works");
    } else {
        assert_eq!(fixes, Vec::<String>::new());
        verified.push("13-15: a second CREATEROLE admin needs nothing more");
    }
    let p = &run.provisioner;
    assert_eq!(
        p.activate(&target2, &dave, &roles(&["reader"])).await?,
        ActivateOutcome::Created
    );
    assert_eq!(run.login(dave.as_str()).await?, dave.as_str());
    assert_eq!(
        p.deactivate(&target2, &dave, TeardownMode::Drop).await?,
        DeactivateOutcome::Dropped
    );
    verified.push("second admin provisions");

    record(major, &version, &verified)
}

#[tokio::test]
async fn lifecycle_core_on_postgresql_13() -> Result<()> {
    lifecycle_core(13).await
}

#[tokio::test]
async fn lifecycle_core_on_postgresql_14() -> Result<()> {
    lifecycle_core(14).await
}

#[tokio::test]
async fn lifecycle_core_on_postgresql_15() -> Result<()> {
    lifecycle_core(15).await
}

#[tokio::test]
async fn lifecycle_core_on_postgresql_16() -> Result<()> {
    lifecycle_core(16).await
}

#[tokio::test]
async fn lifecycle_core_on_postgresql_17() -> Result<()> {
    lifecycle_core(17).await
}

#[tokio::test]
async fn lifecycle_core_on_postgresql_18() -> Result<()> {
    lifecycle_core(18).await
}
