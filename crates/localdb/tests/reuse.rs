//! `dbward quickstart --dir DIR` starts its databases again in the same directory: the second
//! start must find the data of the first (no new `initdb` or install), keep the accounts created
//! since, and stop cleanly each time.

use std::path::Path;
use std::time::Duration;

use dbward_localdb::process::process_running;
use dbward_localdb::{pg_versions, LocalMariaDb, LocalPostgres, PgShutdown, ServerTls};

fn server_tls(dir: &Path) -> ServerTls {
    let cas = dbward_pki::CaSet::generate("localdb-test").expect("CAs");
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let (crt, key) =
        dbward_pki::issue_db_server_cert(&cas.db, &hosts, Duration::from_secs(3600)).expect("cert");
    let tls = ServerTls {
        crt: dir.join("server.crt"),
        key: dir.join("server.key"),
        cas: dir.join("server.cas"),
    };
    std::fs::write(&tls.crt, crt).expect("crt");
    dbward_pki::write_private_file(&tls.key, key.as_bytes()).expect("key");
    std::fs::write(&tls.cas, &cas.db_client.cert_pem).expect("cas");
    tls
}

fn temp_dir() -> tempfile::TempDir {
    // Short: Unix socket paths are limited to 107 bytes.
    tempfile::Builder::new()
        .prefix("dwld")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

#[test]
fn postgres_started_again_in_its_directory_keeps_its_data_and_stops_each_time() {
    let dir = temp_dir();
    let tls = server_tls(dir.path());
    let pg_dir = dir.path().join("pg");
    let bin = pg_versions::newest_system_bin_dir().expect("PostgreSQL binaries");

    let first = LocalPostgres::start(&pg_dir, &bin, &tls, PgShutdown::Fast).expect("first start");
    first
        .psql("postgres", "CREATE ROLE kept LOGIN")
        .expect("create role");
    let pid = first.pid();
    drop(first);
    assert!(
        !process_running(pid),
        "postmaster {pid} still runs after drop"
    );

    let second = LocalPostgres::start(&pg_dir, &bin, &tls, PgShutdown::Fast).expect("second start");
    assert_eq!(
        second
            .psql(
                "postgres",
                "SELECT rolname FROM pg_roles WHERE rolname = 'kept'"
            )
            .expect("query"),
        "kept"
    );
    let pid = second.pid();
    second.stop();
    assert!(
        !process_running(pid),
        "postmaster {pid} still runs after stop"
    );
}

#[test]
fn mariadb_started_again_in_its_directory_keeps_accounts_created_after_install() {
    let dir = temp_dir();
    let tls = server_tls(dir.path());
    let db_dir = dir.path().join("my");

    let first = LocalMariaDb::start(&db_dir, &tls).expect("first start");
    // A fresh install has no account but root over the socket (and the internal mariadb.sys).
    assert_eq!(
        first
            .sql(
                "SELECT COUNT(*) FROM mysql.global_priv WHERE NOT (Host = 'localhost' \
                 AND User IN ('root', 'mariadb.sys'))"
            )
            .expect("count"),
        "0"
    );
    first
        .sql("CREATE USER 'kept'@'%' REQUIRE SUBJECT '/CN=kept'")
        .expect("create user");
    let pid = first.pid();
    drop(first);
    assert!(
        !process_running(pid),
        "mariadbd {pid} still runs after drop"
    );

    let second = LocalMariaDb::start(&db_dir, &tls).expect("second start");
    assert_eq!(
        second
            .sql("SELECT CONCAT(User, '@', Host) FROM mysql.global_priv WHERE User = 'kept'")
            .expect("query"),
        "kept@%"
    );
    let pid = second.pid();
    second.stop();
    assert!(
        !process_running(pid),
        "mariadbd {pid} still runs after stop"
    );
}
