//! Warm PostgreSQL admin connections follow the database: a setting changed with
//! `ALTER ROLE … SET …` (which reaches new sessions only) is seen by `db check` at once, by the
//! next activation after a failure, and by every operation once the connection lifetime
//! has passed. Each test has its own admin role and database on the shared server, so
//! turning its transactions read-only disturbs no other test.

use std::sync::Arc;
use std::time::Duration;

use dbward_pki::{CaSet, ServerVerification};
use dbward_provision::postgres::{AdminTarget, PgProvisioner, PgProvisionerSettings};
use dbward_provision::{ActivateOutcome, DbUserName, Finding};
use dbward_testkit::{shared_cas, shared_pg, unique_name, PgServer};

const CERT_TTL: Duration = Duration::from_secs(3600);

struct Setup {
    pg: &'static PgServer,
    admin: String,
    target: AdminTarget,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn client_config(cas: &CaSet, user: &str) -> Arc<rustls::ClientConfig> {
    let (cert, key) =
        dbward_pki::issue_db_client_cert(&cas.db_client, user, CERT_TTL).expect("client cert");
    dbward_pki::client_config(
        Some(&cas.db.cert_pem),
        ServerVerification::Full,
        Some((&cert, &key)),
    )
    .expect("client config")
}

/// An admin role of the guide's shape (`LOGIN CREATEROLE`, `reader` WITH ADMIN OPTION) and a
/// database of its own.
fn setup() -> Setup {
    let pg = shared_pg().expect("shared PostgreSQL");
    let cas = shared_cas().expect("shared CAs");
    let admin = unique_name("fresh_admin");
    let reader = format!("{admin}_reader");
    let db = format!("{admin}_db");
    pg.psql_super(&format!(
        "CREATE ROLE {a} LOGIN CREATEROLE; CREATE ROLE {r}; GRANT {r} TO {a} WITH ADMIN OPTION; \
         CREATE DATABASE {d};",
        a = quote(&admin),
        r = quote(&reader),
        d = quote(&db),
    ))
    .expect("admin setup");
    let target = AdminTarget {
        engine: dbward_provision::Engine::Postgres,
        host: pg.host.clone(),
        port: pg.port,
        server_name: "localhost".into(),
        client_config: client_config(cas, &admin),
        admin_user: admin.clone(),
        database: db,
        allowed_predefined_roles: Vec::new(),
    };
    Setup { pg, admin, target }
}

impl Setup {
    fn read_only(&self, on: bool) {
        let value = if on { "on" } else { "off" };
        self.pg
            .psql_super(&format!(
                "ALTER ROLE {} SET default_transaction_read_only = {value}",
                quote(&self.admin)
            ))
            .expect("ALTER ROLE");
    }

    fn reader(&self) -> Vec<String> {
        vec![format!("{}_reader", self.admin)]
    }

    fn can_login(&self, user: &str) -> String {
        self.pg
            .psql_super(&format!(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = '{}'",
                user.replace('\'', "''")
            ))
            .expect("catalog query")
    }
}

fn read_only_findings(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.problem.contains("default_transaction_read_only"))
        .collect()
}

fn provisioner(max_connection_lifetime: Duration) -> PgProvisioner {
    PgProvisioner::with_settings(PgProvisionerSettings {
        settle_time: Duration::from_millis(300),
        max_connection_lifetime,
        ..PgProvisionerSettings::default()
    })
}

/// Applying the fix `db check` prints makes the very next activation work, although the pool
/// still holds a connection opened while the admin's transactions were read-only.
#[tokio::test]
async fn activation_after_the_printed_fix_works_without_a_restart() {
    let s = setup();
    let prov = provisioner(Duration::from_secs(3600));
    s.read_only(true);
    // A read-only operation succeeds and leaves a read-only session in the pool.
    let someone = DbUserName::new(unique_name("nobody"));
    assert_eq!(prov.user_state(&s.target, &someone).await.unwrap(), None);
    assert_eq!(prov.idle_connections(&s.target), 1);

    let user = DbUserName::new(unique_name("fresh_user"));
    let err = prov
        .activate(&s.target, &user, &s.reader())
        .await
        .expect_err("activation with read-only admin transactions");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert_eq!(s.can_login(user.as_str()), "", "nothing was created");

    let findings = prov.preflight(&s.target, &s.reader()).await.unwrap();
    let [finding] = read_only_findings(&findings)[..] else {
        panic!("db check must report the read-only default: {findings:?}")
    };
    // The operator applies the printed fix, as printed.
    s.pg.psql_super(&finding.fix).expect("the printed fix runs");

    let outcome = prov
        .activate(&s.target, &user, &s.reader())
        .await
        .expect("the first activation after the fix");
    assert_eq!(outcome, ActivateOutcome::Created);
    assert_eq!(s.can_login(user.as_str()), "t");
}

/// `db check` looks with a new session: right after the fix it reports clean, although the
/// pool still holds a connection opened while the admin's transactions were read-only.
#[tokio::test]
async fn db_check_after_the_fix_reports_clean_at_once() {
    let s = setup();
    let prov = provisioner(Duration::from_secs(3600));
    s.read_only(true);
    let findings = prov.preflight(&s.target, &s.reader()).await.unwrap();
    assert_eq!(read_only_findings(&findings).len(), 1, "{findings:?}");
    let someone = DbUserName::new(unique_name("nobody"));
    assert_eq!(prov.user_state(&s.target, &someone).await.unwrap(), None);
    assert!(prov.idle_connections(&s.target) >= 1);

    s.read_only(false);
    let findings = prov.preflight(&s.target, &s.reader()).await.unwrap();
    assert!(findings.is_empty(), "db check after the fix: {findings:?}");
}

/// Without any error in between, a warm connection is replaced once it reaches the maximum
/// lifetime, so a setting changed in the database reaches every operation.
#[tokio::test]
async fn warm_connections_are_replaced_after_their_maximum_lifetime() {
    let s = setup();
    let prov = provisioner(Duration::from_millis(300));
    prov.warm_up(&s.target).await.expect("warm up");
    assert_eq!(prov.idle_connections(&s.target), 1);
    s.read_only(true);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let user = DbUserName::new(unique_name("fresh_user"));
    let err = prov
        .activate(&s.target, &user, &s.reader())
        .await
        .expect_err("a connection opened after the change is read-only");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert_eq!(s.can_login(user.as_str()), "");

    s.read_only(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        prov.activate(&s.target, &user, &s.reader()).await.unwrap(),
        ActivateOutcome::Created
    );
}
