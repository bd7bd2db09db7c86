//! Certificates written by `dbward auth sign --format db` are all a real PostgreSQL and a real
//! MariaDB need: they accept a `CN=teleport-admin` client certificate from dbward's db-client
//! CA, clients verify them with `verify-full` against `dbward auth export --type db`, and a
//! client certificate from another CA is refused.

use std::path::Path;
use std::process::Command;

use dbward_testkit::{ClientCertFiles, DbServerCerts, MariaServer, PgServer};

const BIN: &str = env!("CARGO_BIN_EXE_dbward");

fn dbward(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("DBWARD_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dbward {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn psql(pg: &PgServer, client: &ClientCertFiles, db_ca: &Path) -> std::process::Output {
    Command::new("psql")
        .arg(format!(
            "host=localhost port={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={} user=teleport-admin dbname=postgres",
            pg.port,
            db_ca.display(),
            client.crt.display(),
            client.key.display()
        ))
        .args(["-X", "-A", "-t", "-c", "select current_user"])
        .output()
        .unwrap()
}

fn mariadb(my: &MariaServer, client: &ClientCertFiles, db_ca: &Path) -> std::process::Output {
    Command::new("mariadb")
        .args(["--no-defaults", "--host=localhost", "--protocol=tcp"])
        .arg(format!("--port={}", my.port))
        .arg(format!("--ssl-ca={}", db_ca.display()))
        .arg(format!("--ssl-cert={}", client.crt.display()))
        .arg(format!("--ssl-key={}", client.key.display()))
        .args([
            "--ssl-verify-server-cert",
            "--user=teleport-admin",
            "-N",
            "-B",
        ])
        .args(["-e", "select current_user()"])
        .output()
        .unwrap()
}

#[test]
fn auth_sign_files_serve_real_databases_with_certificate_auth() {
    let dir = tempfile::Builder::new()
        .prefix("dwsign")
        .tempdir_in("/tmp")
        .unwrap();
    let config = dir.path().join("dbward.yaml");
    std::fs::write(
        &config,
        format!(
            "version: v1\ncluster_name: signtest\ndata_dir: {}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let prefix = dir.path().join("db");
    dbward(
        &config,
        &[
            "auth",
            "sign",
            "--format",
            "db",
            "--host",
            "localhost,127.0.0.1",
            "--out",
            prefix.to_str().unwrap(),
        ],
    );
    let certs = DbServerCerts {
        crt: dir.path().join("db.crt"),
        key: dir.path().join("db.key"),
        cas: dir.path().join("db.cas"),
    };
    let db_ca = dir.path().join("db-ca.pem");
    std::fs::write(&db_ca, dbward(&config, &["auth", "export", "--type", "db"])).unwrap();

    // The CAs that `auth sign` created, read back from the store as the gateway would.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cas = rt.block_on(async {
        let store = dbward_store::Store::open_sqlite(&dir.path().join("data")).unwrap();
        dbward_server::bootstrap::load_or_create_cas(&store, "signtest")
            .await
            .unwrap()
    });
    let admin = ClientCertFiles::issue(&cas, "teleport-admin", dir.path()).unwrap();
    let stranger_cas = dbward_pki::CaSet::generate("elsewhere").unwrap();
    let stranger_dir = dir.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = ClientCertFiles::issue_with(
        &stranger_cas.db_client,
        &cas.db,
        "teleport-admin",
        &stranger_dir,
    )
    .unwrap();

    let pg = PgServer::start(&certs).unwrap();
    pg.psql_super("CREATE ROLE \"teleport-admin\" LOGIN")
        .unwrap();
    let out = psql(&pg, &admin, &db_ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "teleport-admin"
    );
    let out = psql(&pg, &stranger, &db_ca);
    assert!(
        !out.status.success(),
        "a certificate from another CA is refused"
    );

    let my = MariaServer::start(&certs).unwrap();
    my.sql_root("CREATE USER 'teleport-admin'@'%' REQUIRE SUBJECT '/CN=teleport-admin'")
        .unwrap();
    let out = mariadb(&my, &admin, &db_ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "teleport-admin@%"
    );
    let out = mariadb(&my, &stranger, &db_ca);
    assert!(
        !out.status.success(),
        "a certificate from another CA is refused"
    );
}
