//! A PostgreSQL started by the test kit accepts exactly the certificates dbward's db-client CA
//! issues, over TLS that the client verifies in `verify-full` mode, and goes away on drop.

use std::path::Path;
use std::process::{Command, Output};

use dbward_pki::CaSet;
use std::time::Duration;

use dbward_testkit::{
    shared_cas, shared_pg, unique_name, ClientCertFiles, DbServerCerts, PgServer,
};

/// Runs `psql -c sql` over TCP with a client certificate, verifying the server certificate and
/// its host name.
fn psql_with_cert(pg: &PgServer, files: &ClientCertFiles, user: &str, sql: &str) -> Output {
    let conninfo = format!(
        "host={} port={} user={user} dbname=postgres sslmode=verify-full sslrootcert={} \
         sslcert={} sslkey={} connect_timeout=10",
        pg.host,
        pg.port,
        files.server_ca.display(),
        files.crt.display(),
        files.key.display(),
    );
    // The server's own psql, else the system's (the pinned builds of other majors ship none).
    let psql = pg.psql_bin().expect("psql");
    Command::new(psql)
        .args(["-X", "-A", "-t", "-c", sql, &conninfo])
        .env_remove("PGPASSWORD")
        .output()
        .expect("running psql")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn postgres_accepts_db_client_certificate_and_client_verifies_server() -> anyhow::Result<()> {
    let pg = shared_pg()?;
    let cas = shared_cas()?;
    pg.psql_super(r#"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'teleport-admin') THEN CREATE ROLE "teleport-admin" LOGIN; END IF; END $$"#)?;
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue(cas, "teleport-admin", dir.path())?;

    let out = psql_with_cert(
        pg,
        &files,
        "teleport-admin",
        "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.status.success(), "psql failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "teleport-admin true");
    Ok(())
}

#[test]
fn postgres_refuses_client_certificate_from_another_ca() -> anyhow::Result<()> {
    let pg = shared_pg()?;
    let cas = shared_cas()?;
    let user = unique_name("other_ca");
    pg.psql_super(&format!("CREATE ROLE {user} LOGIN"))?;
    let other = CaSet::generate("another-cluster")?;
    let dir = tempfile::tempdir()?;
    // Signed by a foreign db-client CA; the server certificate is still verified normally.
    let files = ClientCertFiles::issue_with(&other.db_client, &cas.db, &user, dir.path())?;

    let out = psql_with_cert(pg, &files, &user, "SELECT current_user");
    assert!(!out.status.success(), "psql connected: {}", stdout(&out));
    assert_eq!(stdout(&out), "");
    // Refused in the TLS handshake (the alert may arrive as a reset), before any
    // authentication check.
    let err = stderr(&out);
    assert!(
        err.contains("unknown ca") || err.contains("SSL SYSCALL") || err.contains("closed"),
        "unexpected error: {err}"
    );
    assert!(
        !err.contains("authentication failed"),
        "unexpected error: {err}"
    );
    Ok(())
}

#[test]
fn postgres_refuses_certificate_whose_cn_names_another_user() -> anyhow::Result<()> {
    let pg = shared_pg()?;
    let cas = shared_cas()?;
    let user = unique_name("cn_user");
    let intruder = unique_name("cn_intruder");
    pg.psql_super(&format!(
        "CREATE ROLE {user} LOGIN; CREATE ROLE {intruder} LOGIN"
    ))?;
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue(cas, &intruder, dir.path())?;

    let out = psql_with_cert(pg, &files, &user, "SELECT current_user");
    assert!(!out.status.success(), "psql connected: {}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("certificate authentication failed"),
        "unexpected error: {err}"
    );
    Ok(())
}

#[test]
fn client_in_verify_full_mode_rejects_server_from_another_db_ca() -> anyhow::Result<()> {
    let pg = shared_pg()?;
    let cas = shared_cas()?;
    let user = unique_name("srv_check");
    pg.psql_super(&format!("CREATE ROLE {user} LOGIN"))?;
    let other = CaSet::generate("another-cluster")?;
    let dir = tempfile::tempdir()?;
    // A valid client certificate, but the client trusts a db CA that did not sign the server.
    let files = ClientCertFiles::issue_with(&cas.db_client, &other.db, &user, dir.path())?;

    let out = psql_with_cert(pg, &files, &user, "SELECT current_user");
    assert!(!out.status.success(), "psql connected: {}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("certificate verify failed"),
        "unexpected error: {err}"
    );
    Ok(())
}

#[test]
fn superuser_sql_runs_statements_in_order_and_reports_errors() -> anyhow::Result<()> {
    let pg = shared_pg()?;
    let db = unique_name("db");
    // CREATE DATABASE cannot run in a transaction block: statements must run one by one.
    let out = pg.psql_super(&format!(
        "CREATE DATABASE {db}; SELECT datname FROM pg_database WHERE datname = '{db}'"
    ))?;
    assert_eq!(out, db);
    assert_eq!(pg.psql_super_in(&db, "SELECT current_database()")?, db);
    let err = pg
        .psql_super("SELECT 1; SELECT * FROM no_such_table; SELECT 2")
        .expect_err("a failing statement must fail the call");
    assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");
    assert!(pg.major_version() >= 12);
    Ok(())
}

#[test]
fn superuser_socket_is_in_a_private_directory() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let pg = shared_pg()?;
    // `local all all trust`: whoever reaches the socket is superuser.
    let mode = std::fs::metadata(&pg.socket_dir)?.permissions().mode();
    assert_eq!(mode & 0o077, 0, "socket directory mode {mode:o}");
    Ok(())
}

/// Whether `pid` runs (an exited process not yet reaped by its parent does not count).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn postmaster_pid(data_dir: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
    Ok(text.lines().next().unwrap_or_default().trim().parse()?)
}

#[test]
fn dropping_the_server_stops_it_and_deletes_its_directory() -> anyhow::Result<()> {
    let cas = CaSet::generate("drop-test")?;
    let dir = tempfile::tempdir()?;
    let certs = DbServerCerts::from_cas(&cas, dir.path())?;
    let pg = PgServer::start(&certs)?;
    let pid = postmaster_pid(&pg.data_dir)?;
    let data_dir = pg.data_dir.clone();
    let port = pg.port;
    assert!(process_alive(pid));
    assert_eq!(pg.psql_super("SELECT 1")?, "1");

    drop(pg);
    assert!(!process_alive(pid), "postmaster {pid} still running");
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}

#[test]
fn a_panicking_test_still_stops_its_server() -> anyhow::Result<()> {
    let cas = CaSet::generate("panic-test")?;
    let dir = tempfile::tempdir()?;
    let certs = DbServerCerts::from_cas(&cas, dir.path())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let pg = PgServer::start(&certs).expect("start");
        tx.send(postmaster_pid(&pg.data_dir).expect("pid"))
            .expect("send");
        panic!("test failure while the server runs");
    })
    .join();
    assert!(joined.is_err());
    let pid = rx.recv()?;
    assert!(!process_alive(pid), "postmaster {pid} survived the panic");
    Ok(())
}

#[test]
fn client_in_verify_full_mode_rejects_server_certificate_for_another_host() -> anyhow::Result<()> {
    let cas = CaSet::generate("host-check")?;
    let dir = tempfile::tempdir()?;
    // Signed by the right db CA, but for a name the client does not connect to.
    let hosts = vec!["db.example.com".to_string()];
    let (crt, key) = dbward_pki::issue_db_server_cert(&cas.db, &hosts, Duration::from_secs(3600))?;
    let certs = DbServerCerts {
        crt: dir.path().join("s.crt"),
        key: dir.path().join("s.key"),
        cas: dir.path().join("s.cas"),
    };
    std::fs::write(&certs.crt, crt)?;
    dbward_pki::write_private_file(&certs.key, key.as_bytes())?;
    std::fs::write(&certs.cas, &cas.db_client.cert_pem)?;
    let pg = PgServer::start(&certs)?;
    pg.psql_super(r#"CREATE ROLE "teleport-admin" LOGIN"#)?;
    let files = ClientCertFiles::issue(&cas, "teleport-admin", dir.path())?;

    let out = psql_with_cert(&pg, &files, "teleport-admin", "SELECT current_user");
    assert!(!out.status.success(), "psql connected: {}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("does not match host name"),
        "unexpected error: {err}"
    );
    Ok(())
}
