//! A MariaDB started by the test kit admits a `REQUIRE SUBJECT '/CN=x'` user only with a
//! certificate from dbward's db-client CA, over TLS that the client verifies (CA and host
//! name), and goes away on drop.

use std::process::{Command, Output};

use dbward_pki::CaSet;
use std::time::Duration;

use dbward_testkit::{
    shared_cas, shared_maria, unique_name, ClientCertFiles, DbServerCerts, MariaServer,
};

/// Runs the `mariadb` client over TCP with a client certificate, verifying the server
/// certificate against `files.server_ca` and the host name `127.0.0.1`.
fn mariadb_with_cert(
    server: &MariaServer,
    files: &ClientCertFiles,
    user: &str,
    sql: &str,
) -> Output {
    Command::new("mariadb")
        .arg("--no-defaults")
        .args([
            "-h",
            &server.host,
            "-P",
            &server.port.to_string(),
            "-u",
            user,
        ])
        .arg(format!("--ssl-ca={}", files.server_ca.display()))
        .arg(format!("--ssl-cert={}", files.crt.display()))
        .arg(format!("--ssl-key={}", files.key.display()))
        .args([
            "--ssl-verify-server-cert",
            "--connect-timeout=10",
            "-N",
            "-B",
            "-e",
            sql,
        ])
        .output()
        .expect("running mariadb")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn mariadb_accepts_db_client_certificate_and_client_verifies_server() -> anyhow::Result<()> {
    let server = shared_maria()?;
    let cas = shared_cas()?;
    server.sql_root(
        "CREATE USER IF NOT EXISTS 'teleport-admin'@'%' REQUIRE SUBJECT '/CN=teleport-admin'",
    )?;
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue(cas, "teleport-admin", dir.path())?;

    let out = mariadb_with_cert(
        server,
        &files,
        "teleport-admin",
        "SELECT current_user(), VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
         WHERE VARIABLE_NAME = 'Ssl_version'",
    );
    assert!(out.status.success(), "mariadb failed: {}", stderr(&out));
    let text = stdout(&out);
    let (user, tls) = text.split_once('\t').unwrap_or((&text, ""));
    assert_eq!(user, "teleport-admin@%");
    assert!(tls.starts_with("TLSv1."), "session TLS version {tls:?}");
    Ok(())
}

#[test]
fn mariadb_refuses_client_certificate_from_another_ca() -> anyhow::Result<()> {
    let server = shared_maria()?;
    let cas = shared_cas()?;
    let user = unique_name("other_ca");
    server.sql_root(&format!(
        "CREATE USER '{user}'@'%' REQUIRE SUBJECT '/CN={user}'"
    ))?;
    let other = CaSet::generate("another-cluster")?;
    let dir = tempfile::tempdir()?;
    // Same subject, but signed by a db-client CA the server does not trust.
    let files = ClientCertFiles::issue_with(&other.db_client, &cas.db, &user, dir.path())?;

    let out = mariadb_with_cert(server, &files, &user, "SELECT current_user()");
    assert!(!out.status.success(), "mariadb connected: {}", stdout(&out));
    assert_eq!(stdout(&out), "");
    // Refused in the TLS handshake (the alert may arrive as a reset), before any account check.
    let err = stderr(&out);
    assert!(
        err.contains("unknown ca") || err.contains("Lost connection"),
        "unexpected error: {err}"
    );
    Ok(())
}

#[test]
fn mariadb_refuses_certificate_with_another_subject() -> anyhow::Result<()> {
    let server = shared_maria()?;
    let cas = shared_cas()?;
    let user = unique_name("subj_user");
    let intruder = unique_name("subj_intruder");
    server.sql_root(&format!(
        "CREATE USER '{user}'@'%' REQUIRE SUBJECT '/CN={user}'; \
         CREATE USER '{intruder}'@'%' REQUIRE SUBJECT '/CN={intruder}'"
    ))?;
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue(cas, &intruder, dir.path())?;

    let out = mariadb_with_cert(server, &files, &user, "SELECT current_user()");
    assert!(!out.status.success(), "mariadb connected: {}", stdout(&out));
    assert!(stderr(&out).contains("Access denied"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn client_verifying_server_rejects_server_from_another_db_ca() -> anyhow::Result<()> {
    let server = shared_maria()?;
    let cas = shared_cas()?;
    let user = unique_name("srv_check");
    server.sql_root(&format!(
        "CREATE USER '{user}'@'%' REQUIRE SUBJECT '/CN={user}'"
    ))?;
    let other = CaSet::generate("another-cluster")?;
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue_with(&cas.db_client, &other.db, &user, dir.path())?;

    let out = mariadb_with_cert(server, &files, &user, "SELECT current_user()");
    assert!(!out.status.success(), "mariadb connected: {}", stdout(&out));
    assert!(
        stderr(&out).contains("unable to get local issuer certificate"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn only_root_over_the_socket_and_created_users_exist() -> anyhow::Result<()> {
    let server = shared_maria()?;
    // Anonymous users and passwordless remote roots would admit connections the tests do not
    // expect.
    let leftovers = server.sql_root(
        "SELECT CONCAT(User, '@', Host) FROM mysql.global_priv \
         WHERE User = '' OR (User = 'root' AND Host <> 'localhost')",
    )?;
    assert_eq!(leftovers, "");
    let no_cert = Command::new("mariadb")
        .arg("--no-defaults")
        .args([
            "-h",
            &server.host,
            "-P",
            &server.port.to_string(),
            "-u",
            "root",
        ])
        .args([
            "--connect-timeout=10",
            "-N",
            "-B",
            "-e",
            "SELECT current_user()",
        ])
        .output()?;
    assert!(
        !no_cert.status.success(),
        "root over TCP: {}",
        stdout(&no_cert)
    );
    Ok(())
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

#[test]
fn dropping_the_server_stops_it_and_deletes_its_directory() -> anyhow::Result<()> {
    let cas = CaSet::generate("drop-test")?;
    let dir = tempfile::tempdir()?;
    let certs = DbServerCerts::from_cas(&cas, dir.path())?;
    let server = MariaServer::start(&certs)?;
    let pid: i32 = std::fs::read_to_string(
        server
            .data_dir
            .parent()
            .expect("parent")
            .join("mariadbd.pid"),
    )?
    .trim()
    .parse()?;
    let data_dir = server.data_dir.clone();
    let port = server.port;
    assert!(process_alive(pid));
    assert_eq!(server.sql_root("SELECT 1")?, "1");

    drop(server);
    assert!(!process_alive(pid), "mariadbd {pid} still running");
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}

#[test]
fn client_verifying_server_rejects_server_certificate_for_another_host() -> anyhow::Result<()> {
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
    let server = MariaServer::start(&certs)?;
    server.sql_root("CREATE USER 'teleport-admin'@'%' REQUIRE SUBJECT '/CN=teleport-admin'")?;
    let files = ClientCertFiles::issue(&cas, "teleport-admin", dir.path())?;

    let out = mariadb_with_cert(&server, &files, "teleport-admin", "SELECT current_user()");
    assert!(!out.status.success(), "mariadb connected: {}", stdout(&out));
    assert!(
        stderr(&out).contains("Validation of SSL server certificate failed"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
