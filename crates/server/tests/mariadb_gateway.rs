//! The MySQL-protocol gateway end to end: real MariaDB, real `mariadb` client, observed in
//! `mysql.global_priv` and `mysql.roles_mapping`.

mod common;

use common::*;

struct World {
    db: String,
    admin: String,
    reader: String,
    writer: String,
    schema: String,
    role: String,
}

fn world(mode: &str) -> World {
    let h = maria_harness();
    let n = unique("m");
    let w = World {
        db: format!("my-{n}"),
        admin: format!("adm_{n}"),
        reader: format!("reader_{n}"),
        writer: format!("writer_{n}"),
        schema: format!("app_{n}"),
        role: format!("role-{n}"),
    };
    h.maria_sql(&format!(
        "CREATE USER '{a}'@'%' REQUIRE SUBJECT '/CN={a}';
         GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO '{a}'@'%';
         GRANT SELECT ON mysql.roles_mapping TO '{a}'@'%';
         GRANT UPDATE ON mysql.* TO '{a}'@'%';
         GRANT SELECT ON *.* TO '{a}'@'%';
         CREATE ROLE IF NOT EXISTS `dbward-auto-user`;
         GRANT `dbward-auto-user` TO '{a}'@'%' WITH ADMIN OPTION;
         CREATE DATABASE IF NOT EXISTS dbward;
         GRANT ALL ON dbward.* TO '{a}'@'%' WITH GRANT OPTION;
         CREATE ROLE `{r}` WITH ADMIN '{a}'@'%';
         CREATE ROLE `{wr}` WITH ADMIN '{a}'@'%';
         CREATE DATABASE `{s}`;
         CREATE TABLE `{s}`.t (id int);
         INSERT INTO `{s}`.t VALUES (1);
         GRANT SELECT ON `{s}`.* TO `{r}`;
         GRANT INSERT, CREATE VIEW, SHOW VIEW ON `{s}`.* TO `{wr}`;",
        a = w.admin,
        r = w.reader,
        wr = w.writer,
        s = w.schema
    ));
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: {mode}}}\n  allow:\n    db_labels: {{test: \"{n}\"}}\n    db_roles: [\"{reader}\", \"{writer}\"]\n---\n{db}\n",
        role = w.role,
        reader = w.reader,
        writer = w.writer,
        db = h.maria_db_yaml(&w.db, &format!("{{test: \"{n}\"}}"), Some(&w.admin)),
    ));
    w
}

fn add_user(name: &str, roles: &[&str]) {
    let roles = roles
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    maria_harness().apply(&format!(
        "kind: user\nversion: v2\nmetadata: {{name: {name:?}}}\nspec: {{roles: [{roles}]}}\n"
    ));
}

/// `account_locked` of 'user'@'%': Some(true/false), None when the account does not exist.
fn locked(user: &str) -> Option<bool> {
    let out = maria_harness().maria_sql(&format!(
        "SELECT IFNULL(JSON_VALUE(Priv, '$.account_locked'), 'false') FROM mysql.global_priv WHERE User = {} AND Host = '%'",
        lit(user)
    ));
    match out.as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        "" => None,
        other => panic!("unexpected account_locked value {other:?}"),
    }
}

/// The roles granted to 'user'@'%', sorted, comma separated.
fn roles_of(user: &str) -> String {
    maria_harness().maria_sql(&format!(
        "SELECT IFNULL(GROUP_CONCAT(Role ORDER BY Role), '') FROM mysql.roles_mapping WHERE User = {} AND Host = '%'",
        lit(user)
    ))
}

fn role_exists(role: &str) -> bool {
    maria_harness().maria_sql(&format!(
        "SELECT COUNT(*) FROM mysql.user WHERE User = {} AND is_role = 'Y'",
        lit(role)
    )) == "1"
}

/// An interactive mariadb client through the gateway.
fn open_mariadb(files: &ClientFiles, user: &str) -> Result<OpenSession, String> {
    let mut cmd = maria_harness().mariadb_command(files, user, "");
    // Batch mode reading stdin, unbuffered, instead of one `-e` statement.
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_os_string())
        .take_while(|a| a != "-N")
        .collect();
    cmd = std::process::Command::new("mariadb");
    cmd.args(args).args(["-N", "-B", "-n"]);
    OpenSession::start(cmd)
}

#[test]
fn keep_mode_unlocks_during_session_and_locks_after() {
    let h = maria_harness();
    let w = world("keep");
    let user = unique("alice");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));

    let mut s = open_mariadb(&files, &user).expect("session starts");
    assert_eq!(
        s.query("SELECT CURRENT_USER()").as_deref(),
        Some(format!("{user}@%").as_str())
    );
    assert_eq!(
        s.query("SELECT CURRENT_ROLE()").as_deref(),
        Some(format!("dw-role-{user}").as_str())
    );
    assert_eq!(
        s.query(&format!("SELECT COUNT(*) FROM `{}`.t", w.schema))
            .as_deref(),
        Some("1"),
        "the reader role works"
    );
    assert_eq!(locked(&user), Some(false));
    assert_eq!(roles_of(&user), format!("dbward-auto-user,dw-role-{user}"));
    s.close();

    h.eventually("account locked", || locked(&user) == Some(true));
    assert_eq!(
        roles_of(&user),
        "dbward-auto-user",
        "holds only the marker role"
    );

    // The next session unlocks it again.
    let r = h.mariadb(&files, &user, "SELECT CURRENT_USER()");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, format!("{user}@%"));
    h.eventually("locked again", || locked(&user) == Some(true));
}

#[test]
fn best_effort_drop_removes_user_and_role_or_locks_a_definer() {
    let h = maria_harness();
    let w = world("best_effort_drop");
    let user = unique("dropme");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));
    let r = h.mariadb(&files, &user, "SELECT 1");
    assert!(r.ok, "{r:?}");
    h.eventually("user dropped", || locked(&user).is_none());
    assert!(
        !role_exists(&format!("dw-role-{user}")),
        "all-in-one role dropped"
    );

    // The DEFINER of a view is locked instead, and the view keeps working for others.
    let definer = unique("definer");
    add_user(&definer, &[&w.role]);
    let files = h.db_cert(&definer, route(&w.db, &definer, "", &[]));
    let r = h.mariadb(
        &files,
        &definer,
        &format!(
            "CREATE SQL SECURITY INVOKER VIEW `{}`.v AS SELECT id FROM `{}`.t",
            w.schema, w.schema
        ),
    );
    assert!(r.ok, "{r:?}");
    h.eventually("definer locked", || locked(&definer) == Some(true));
    assert_eq!(
        h.maria_sql(&format!("SELECT COUNT(*) FROM `{}`.v", w.schema)),
        "1"
    );
}

#[test]
fn long_names_are_hashed_and_mapped_back() {
    let h = maria_harness();
    let w = world("keep");
    let long = format!("{}{}", unique("l"), "y".repeat(101))
        .chars()
        .take(101)
        .collect::<String>();
    assert_eq!(long.chars().count(), 101);
    add_user(&long, &[&w.role]);
    let files = h.db_cert(&long, route(&w.db, &long, "", &[]));
    let r = h.mariadb(&files, &long, "SELECT CURRENT_USER()");
    assert!(r.ok, "{r:?}");
    let hashed = dbward_provision::mysql::mariadb_user_name(&long)
        .as_str()
        .to_string();
    assert!(hashed.starts_with("dw-"), "{hashed}");
    assert_eq!(r.stdout, format!("{hashed}@%"));
    let recorded = h.maria_sql(&format!(
        "SELECT JSON_VALUE(Attributes, '$.user') FROM dbward.user_attributes WHERE User = {}",
        lit(&hashed)
    ));
    assert_eq!(recorded, long);
    h.eventually("audit has the session", || {
        h.audit_events(&long)
            .iter()
            .any(|e| e["event"] == "db.session.start" && e["db_user"] == hashed.as_str())
    });
}

#[test]
fn concurrent_sessions_and_role_changes() {
    let h = maria_harness();
    let w = world("keep");
    let user = unique("conc");
    add_user(&user, &[&w.role]);
    let all = h.db_cert(&user, route(&w.db, &user, "", &[]));
    let first = open_mariadb(&all, &user).expect("first");
    let mut second = open_mariadb(&all, &user).expect("second");
    first.close();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        locked(&user),
        Some(false),
        "still unlocked while a session is live"
    );
    assert_eq!(second.query("SELECT 1").as_deref(), Some("1"));

    let reader_only = h.db_cert(&user, route(&w.db, &user, "", &[&w.reader]));
    let r = h.mariadb(&reader_only, &user, "SELECT 1");
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&format!(
            "roles for user \"{user}\" have changed. Please quit all active connections and try again."
        )),
        "{}",
        r.stderr
    );
    assert_eq!(second.query("SELECT 2").as_deref(), Some("2"));
    second.close();
    h.eventually("locked after the last session", || {
        locked(&user) == Some(true)
    });
}

#[test]
fn unmanaged_users_and_refusals_change_nothing() {
    let h = maria_harness();
    let w = world("keep");
    h.maria_sql("CREATE USER IF NOT EXISTS 'carol'@'%' REQUIRE SUBJECT '/CN=carol'");
    for name in ["root", w.admin.as_str(), "carol"] {
        add_user(name, &[&w.role]);
        let before = h.maria_sql(&format!(
            "SELECT IFNULL(GROUP_CONCAT(CONCAT(Host, Priv) ORDER BY Host), '') FROM mysql.global_priv WHERE User = {}",
            lit(name)
        ));
        let files = h.db_cert(name, route(&w.db, name, "", &[]));
        let r = h.mariadb(&files, name, "SELECT CURRENT_USER()");
        assert!(!r.ok, "{name} must be refused: {r:?}");
        assert!(
            r.stderr
                .contains("already exists in this database and is not managed by dbward"),
            "{name}: {}",
            r.stderr
        );
        let after = h.maria_sql(&format!(
            "SELECT IFNULL(GROUP_CONCAT(CONCAT(Host, Priv) ORDER BY Host), '') FROM mysql.global_priv WHERE User = {}",
            lit(name)
        ));
        assert_eq!(before, after, "{name} unchanged");
    }

    // A role the dbward role does not allow.
    let user = unique("refused");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &["superpower"]));
    let r = h.mariadb(&files, &user, "SELECT 1");
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("access to database role \"superpower\" denied"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("1045"),
        "an ERR packet with an error number: {}",
        r.stderr
    );
    assert_eq!(locked(&user), None, "nothing created");

    // A role the admin is not ADMIN of.
    let n = unique("na");
    let foreign = format!("foreign_{n}");
    h.maria_sql(&format!("CREATE ROLE `{foreign}`"));
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: rf-{n}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_roles: [{foreign}]\n"
    ));
    let fuser = unique("fuser");
    add_user(&fuser, &[&format!("rf-{n}")]);
    let files = h.db_cert(&fuser, route(&w.db, &fuser, "", &[]));
    let r = h.mariadb(&files, &fuser, "SELECT 1");
    assert!(!r.ok, "{r:?}");
    // The client reads what was refused (the guide's "permission denied to grant role"),
    // its session id and the command to run; the admin's name and the fix are for the log
    // and `dbward db check`.
    assert!(
        r.stderr.contains(&format!(
            "permission denied to grant role \"{foreign}\" (session "
        )) && r.stderr.contains(&format!("dbward db check {}", w.db))
            && !r.stderr.contains(&w.admin),
        "{}",
        r.stderr
    );
    assert_eq!(locked(&fuser), None, "no user was created");
    assert_ne!(
        h.maria_sql(&format!(
            "SELECT COUNT(*) FROM mysql.roles_mapping WHERE Role = {} AND User = {}",
            lit(&foreign),
            lit(&format!("dw-role-{fuser}"))
        )),
        "1",
        "the role was not granted"
    );

    // Plaintext clients are refused with a clear ERR.
    let r = std::process::Command::new("mariadb")
        .args(["--no-defaults", "--host=127.0.0.1"])
        .arg(format!("--port={}", h.mysql_addr.port()))
        .args(["--skip-ssl", "--user=x", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn greeting_reports_the_real_server_version_once_known() {
    let h = maria_harness();
    let w = world("keep");
    let user = unique("ver");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));
    let r = h.mariadb(&files, &user, "SELECT VERSION()");
    assert!(r.ok, "{r:?}");
    let real = r.stdout.clone();
    let r = h.mariadb(&files, &user, "status");
    assert!(r.ok, "{r:?}");
    assert!(
        r.stdout.contains(&real) || r.stdout.contains(real.split('-').next().unwrap()),
        "{}",
        r.stdout
    );
}

/// Connection options for mysql_async through the gateway as `user` on `db`. mysql_async
/// reads only PKCS#1 RSA keys, so this client's key pair is RSA (the gateway accepts any key
/// type the user CA signed).
fn driver_opts(db: &str, user: &str) -> mysql_async::OptsBuilder {
    let h = maria_harness();
    let dir = h.dir.join(unique("rsa"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let csr = dir.join("req.csr");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl genrsa");
    let ok = std::process::Command::new("openssl")
        .args(["req", "-new", "-subj", &format!("/CN={user}"), "-key"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl req");
    let identity = dbward_pki::Identity {
        username: user.to_string(),
        cluster: h.gw.cluster.clone(),
        usage: dbward_pki::CertUsage::Db,
        expires: time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(600),
        route: Some(route(db, user, "", &[])),
        pinned_ip: None,
        mfa_session_until: None,
    };
    let cert = dbward_pki::issue_user_cert(
        &h.gw.cas.user,
        &identity,
        &std::fs::read_to_string(&csr).unwrap(),
    )
    .unwrap();
    let cert_path = dir.join("cert.pem");
    std::fs::write(&cert_path, cert).unwrap();
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![h.host_ca.clone().into()])
        .with_client_identity(Some(mysql_async::ClientIdentity::new(
            cert_path.into(),
            key.into(),
        )));
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("localhost")
        .tcp_port(h.mysql_addr.port())
        .user(Some(user.to_string()))
        .ssl_opts(Some(ssl))
}

/// A Rust driver (mysql_async) through the gateway.
#[test]
fn mysql_async_works_through_the_gateway() {
    use mysql_async::prelude::*;
    let h = maria_harness();
    let w = world("keep");
    let user = unique("driver");
    add_user(&user, &[&w.role]);
    let opts = driver_opts(&w.db, &user);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = mysql_async::Conn::new(opts).await.expect("connects");
        let current: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
        assert_eq!(current, Some(format!("{user}@%")));
        // Prepared statements go through COM_STMT_PREPARE.
        let n: Option<i64> = conn
            .exec_first(
                format!("SELECT COUNT(*) + ? FROM `{}`.t", w.schema),
                (41i64,),
            )
            .await
            .unwrap();
        assert_eq!(n, Some(42));
        conn.disconnect().await.unwrap();
    });
    h.eventually("locked after the driver left", || {
        locked(&user) == Some(true)
    });
    let queries: Vec<String> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.query")
        .filter_map(|e| e["db_query"].as_str().map(str::to_string))
        .collect();
    assert!(
        queries.iter().any(|q| q.contains("COUNT(*) + ?")),
        "{queries:?}"
    );
}

/// A MariaDB user left unlocked by a crash is locked by the reconciler.
#[test]
fn reconciler_locks_users_left_active_by_a_crash() {
    let h = maria_harness();
    let w = world("keep");
    let leftover = unique("crashed");
    add_user(&leftover, &[&w.role]);
    let snapshot = h.block_on(h.gw.catalog.snapshot()).unwrap();
    let db = snapshot.dbs.get(&w.db).unwrap().clone();
    let admin = dbward_provision::mysql::AdminTarget {
        engine: dbward_provision::Engine::Mysql,
        host: "127.0.0.1".into(),
        port: h.maria().port,
        server_name: "localhost".into(),
        client_config: h
            .gw
            .upstream
            .target(&h.gw.cas, &db, &w.admin)
            .ok()
            .unwrap()
            .tls,
        admin_user: w.admin.clone(),
        database: "dbward".into(),
        allowed_predefined_roles: Vec::new(),
    };
    h.block_on(h.gw.provisioners.mysql().activate(
        &admin,
        &dbward_provision::DbUserName::new(leftover.clone()),
        &leftover,
        std::slice::from_ref(&w.reader),
    ))
    .unwrap();
    assert_eq!(locked(&leftover), Some(false));
    h.block_on(dbward_server::session::reconcile_once(&h.gw))
        .unwrap();
    assert_eq!(locked(&leftover), Some(true), "the leftover is locked");
    assert_eq!(roles_of(&leftover), "dbward-auto-user");
}

/// `dbward db check`: each missing admin privilege is reported with the GRANT that fixes it.
#[test]
fn preflight_reports_missing_admin_privileges_with_fixes() {
    let h = maria_harness();
    let w = world("keep");
    let user = unique("chk");
    add_user(&user, &[&w.role]);
    let findings = h
        .block_on(dbward_server::session::preflight(&h.gw, &w.db, &[]))
        .unwrap();
    let mentions = |word: &str| {
        findings
            .iter()
            .any(|f| f.problem.contains(word) || f.fix.contains(word))
    };
    assert!(!mentions("PROCESS"), "{findings:?}");
    assert!(!mentions("CONNECTION ADMIN"), "{findings:?}");
    assert!(!mentions(&w.reader) && !mentions(&w.writer), "{findings:?}");

    // Without CONNECTION ADMIN the admin cannot end a dead gateway's sessions: reported.
    h.maria_sql(&format!(
        "REVOKE CONNECTION ADMIN ON *.* FROM '{}'@'%'",
        w.admin
    ));
    h.gw.upstream.forget_db(&w.db);
    let findings = h
        .block_on(dbward_server::session::preflight(&h.gw, &w.db, &[]))
        .unwrap();
    let kill = findings
        .iter()
        .find(|f| f.fix.contains("CONNECTION ADMIN"))
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(
        kill.fix,
        format!("GRANT CONNECTION ADMIN ON *.* TO `{}`@`%`;", w.admin)
    );
    h.maria_sql(&kill.fix);

    // Take PROCESS away, and let the dbward role grant a role the admin is not ADMIN of.
    let foreign = format!("{}_foreign", w.reader);
    h.maria_sql(&format!(
        "REVOKE PROCESS ON *.* FROM '{}'@'%'; CREATE ROLE `{foreign}`",
        w.admin
    ));
    let label = &w.db[3..];
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {foreign}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{test: \"{label}\"}}\n    db_roles: [{foreign}]\n"
    ));
    add_user(&user, &[&w.role, &foreign]);
    // A fresh admin connection sees the new grants.
    h.gw.upstream.forget_db(&w.db);
    let findings = h
        .block_on(dbward_server::session::preflight(&h.gw, &w.db, &[]))
        .unwrap();
    let process = findings
        .iter()
        .find(|f| f.fix.contains("PROCESS"))
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert!(
        process.fix.starts_with("GRANT PROCESS ON *.* TO"),
        "{process:?}"
    );
    let admin_of = findings
        .iter()
        .find(|f| f.problem.contains(&foreign))
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(
        admin_of.fix,
        format!(
            "GRANT `{}` TO `{}`@`%` WITH ADMIN OPTION;",
            foreign, w.admin
        )
    );
    // Applying the fixes clears the findings.
    h.maria_sql(&format!("{} {}", process.fix, admin_of.fix));
    h.gw.upstream.forget_db(&w.db);
    let findings = h
        .block_on(dbward_server::session::preflight(&h.gw, &w.db, &[]))
        .unwrap();
    assert!(
        !findings
            .iter()
            .any(|f| f.fix.contains("PROCESS") || f.problem.contains(&foreign)),
        "{findings:?}"
    );
}

/// Garbage or a vanished client on the MySQL listener costs only that connection.
#[test]
fn garbage_and_vanished_clients_leave_the_listener_serving() {
    use std::io::{Read, Write};
    let h = maria_harness();
    // Read the greeting, answer with garbage.
    let mut s = std::net::TcpStream::connect(h.mysql_addr).unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut greeting = vec![0u8; len];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(greeting[0], 10, "protocol 10 greeting");
    let _ = s.write_all(&[0xff; 64]);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // Connect and leave without a word.
    drop(std::net::TcpStream::connect(h.mysql_addr).unwrap());
    // A real client still gets through.
    let w = world("keep");
    let user = unique("stillok");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));
    let r = h.mariadb(&files, &user, "SELECT CURRENT_USER()");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, format!("{user}@%"));
}

/// COM_CHANGE_USER would log the session in as another account while the audit still names
/// the person: the gateway answers it with an error, never forwards it, and records it.
#[test]
fn change_user_is_refused_and_the_session_keeps_its_user() {
    use mysql_async::prelude::*;
    let h = maria_harness();
    let w = world("keep");
    let user = unique("switcher");
    add_user(&user, &[&w.role]);
    // An account with a known password and every privilege: what a switch would reach.
    let target = unique("svc_app");
    h.maria_sql(&format!(
        "CREATE USER '{target}'@'%' IDENTIFIED BY 'known'; GRANT ALL ON *.* TO '{target}'@'%';"
    ));
    let opts = driver_opts(&w.db, &user);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = mysql_async::Conn::new(opts).await.expect("connects");
        let switched = conn
            .change_user(
                mysql_async::ChangeUserOpts::default()
                    .with_user(Some(target.clone()))
                    .with_pass(Some("known".into())),
            )
            .await;
        let err = switched.expect_err("COM_CHANGE_USER is refused");
        assert!(err.to_string().contains("COM_CHANGE_USER"), "{err}");
        let current: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
        assert_eq!(
            current,
            Some(format!("{user}@%")),
            "the session kept its user"
        );
        let _ = conn.disconnect().await;
    });
    assert_eq!(
        h.maria_sql(&format!(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = {}",
            lit(&target)
        )),
        "0"
    );
    h.eventually("the refusal is audited", || {
        h.audit_events(&user).iter().any(|e| {
            e["event"] == "db.session.query"
                && e["db_query"] == "COM_CHANGE_USER"
                && e["success"] == false
        })
    });
}

/// Replication commands sent raw are answered by the gateway with an ERR in sequence, and the
/// session goes on.
#[test]
fn replication_commands_get_an_error_from_the_gateway_and_the_session_goes_on() {
    use dbward_proxy::mysql::packet::{self, ErrPacket};
    let h = maria_harness();
    let w = world("keep");
    let user = unique("replica");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));
    let tls = dbward_pki::client_config(
        Some(&std::fs::read_to_string(&files.ca).unwrap()),
        dbward_pki::ServerVerification::Full,
        Some((
            &std::fs::read_to_string(&files.crt).unwrap(),
            &std::fs::read_to_string(&files.key).unwrap(),
        )),
    )
    .unwrap();
    h.block_on(async {
        let login = dbward_proxy::mysql::UpstreamLogin {
            user: &user,
            database: None,
            client_capabilities: dbward_proxy::mysql::GATEWAY_CAPABILITIES,
            charset: 45,
        };
        let mut session = dbward_proxy::mysql::upstream::connect(
            ("127.0.0.1", h.mysql_addr.port()),
            tls,
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            &login,
        )
        .await
        .expect("logs in through the gateway");
        let mut dump = vec![0x12u8];
        dump.extend_from_slice(&4u32.to_le_bytes());
        dump.extend_from_slice(&0u16.to_le_bytes());
        dump.extend_from_slice(&4242u32.to_le_bytes());
        dump.extend_from_slice(b"mysql-bin.000001");
        let mut gtid = vec![0x1eu8, 0, 0];
        gtid.extend_from_slice(&4243u32.to_le_bytes());
        gtid.extend_from_slice(&[0; 12]);
        let mut register = vec![0x15u8];
        register.extend_from_slice(&4244u32.to_le_bytes());
        register.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for (command, name) in [
            (dump, "COM_BINLOG_DUMP"),
            (gtid, "COM_BINLOG_DUMP_GTID"),
            (register, "COM_REGISTER_SLAVE"),
        ] {
            packet::write_packet(&mut session.stream, 0, &command)
                .await
                .unwrap();
            let answer = packet::read_packet(&mut session.stream, 1 << 20)
                .await
                .unwrap();
            assert_eq!(answer.seq, 1, "{name}");
            let err = ErrPacket::decode(&answer.payload).expect("an ERR packet");
            assert!(
                err.message.contains("dbward") && err.message.contains(name),
                "{name} answered by the gateway, not the server: {}",
                err.message
            );
        }
        // COM_PING still reaches the server.
        packet::write_packet(&mut session.stream, 0, &[0x0e])
            .await
            .unwrap();
        let pong = packet::read_packet(&mut session.stream, 1 << 20)
            .await
            .unwrap();
        assert_eq!((pong.seq, pong.payload[0]), (1, 0), "OK to the ping");
    });
    h.eventually("the refusals are audited", || {
        let events = h.audit_events(&user);
        [
            "COM_BINLOG_DUMP",
            "COM_BINLOG_DUMP_GTID",
            "COM_REGISTER_SLAVE",
        ]
        .iter()
        .all(|name| events.iter().any(|e| e["db_query"] == *name))
    });
}

/// The relay takes only packets with sequence id 0 for commands (other packets continue one:
/// LOAD DATA LOCAL contents). A COM_CHANGE_USER sent with another sequence id is relayed, and
/// must then be refused by the server itself, never executed.
#[test]
fn change_user_with_a_nonzero_sequence_id_is_never_executed() {
    use dbward_proxy::mysql::packet;
    let h = maria_harness();
    let w = world("keep");
    let user = unique("outoforder");
    add_user(&user, &[&w.role]);
    let target = unique("svc_ooo");
    h.maria_sql(&format!(
        "CREATE USER '{target}'@'%'; GRANT ALL ON *.* TO '{target}'@'%';"
    ));
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));
    let tls = dbward_pki::client_config(
        Some(&std::fs::read_to_string(&files.ca).unwrap()),
        dbward_pki::ServerVerification::Full,
        Some((
            &std::fs::read_to_string(&files.crt).unwrap(),
            &std::fs::read_to_string(&files.key).unwrap(),
        )),
    )
    .unwrap();
    h.block_on(async {
        let login = dbward_proxy::mysql::UpstreamLogin {
            user: &user,
            database: None,
            client_capabilities: dbward_proxy::mysql::GATEWAY_CAPABILITIES,
            charset: 45,
        };
        let mut session = dbward_proxy::mysql::upstream::connect(
            ("127.0.0.1", h.mysql_addr.port()),
            tls,
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            &login,
        )
        .await
        .expect("logs in through the gateway");
        // COM_CHANGE_USER to a passwordless account: user, empty auth data, no database,
        // utf8mb4, the native plugin.
        let mut change = vec![0x11u8];
        change.extend_from_slice(target.as_bytes());
        change.extend_from_slice(&[0, 0, 0, 45, 0]);
        change.extend_from_slice(b"mysql_native_password\0");
        for seq in [1u8, 5, 255] {
            let _ = packet::write_packet(&mut session.stream, seq, &change).await;
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                packet::read_packet(&mut session.stream, 1 << 20),
            )
            .await
            .expect("an answer or a close");
            match answer {
                Ok(reply) => assert_eq!(
                    reply.payload.first(),
                    Some(&packet::ERR_HEADER),
                    "sequence id {seq}: the server did not refuse it"
                ),
                // The server closed the connection: nothing was executed.
                Err(_) => break,
            }
        }
    });
    assert_eq!(
        h.maria_sql(&format!(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = {}",
            lit(&target)
        )),
        "0",
        "no session ever ran as the other account"
    );
}

/// `db_permissions` cannot be applied on MariaDB (nor by the reference): a role that gives them
/// on a MariaDB database refuses the session with a clear message, and nothing is created,
/// rather than connecting with nothing granted.
#[test]
fn db_permissions_on_mariadb_are_refused_with_a_clear_message() {
    let h = maria_harness();
    let w = world("keep");
    let n = unique("p");
    let role = format!("perms-{n}");
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{'*': '*'}}\n    db_names: ['*']\n    db_permissions:\n    - match: {{object_kind: table}}\n      permissions: [SELECT]\n"
    ));
    let user = unique("perm");
    add_user(&user, &[&role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));

    let r = h.mariadb(&files, &user, "SELECT 1");

    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr
            .contains("db_permissions are only supported on PostgreSQL"),
        "{r:?}"
    );
    assert_eq!(locked(&user), None, "no account was created");
}

/// `max_connections` from a role that grants nothing itself still limits the user: one
/// session too many is refused with MySQL's ER_USER_LIMIT_REACHED naming the limit.
#[test]
fn max_connections_refuses_one_session_too_many() {
    let h = maria_harness();
    let w = world("keep");
    let limit = unique("limit");
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {limit}}}\nspec:\n  options: {{max_connections: 1}}\n"
    ));
    let user = unique("mc");
    add_user(&user, &[&w.role, &limit]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));

    let mut held = open_mariadb(&files, &user).expect("first session");
    assert_eq!(held.query("SELECT 1").as_deref(), Some("1"));
    let r = h.mariadb(&files, &user, "SELECT 1");
    assert!(!r.ok, "a second session was accepted");
    assert!(r.stderr.contains("1226"), "{}", r.stderr);
    assert!(
        r.stderr.contains("max_connections of your roles is 1"),
        "{}",
        r.stderr
    );
    held.close();
    h.eventually("a session once the first has ended", || {
        h.mariadb(&files, &user, "SELECT 1").ok
    });
    h.eventually("account locked", || locked(&user) == Some(true));
}

/// `client_idle_timeout` on MariaDB: a client silent for longer is disconnected by the
/// gateway, its account locked by the normal teardown, and the end record says why.
#[test]
fn an_idle_client_is_disconnected_and_its_account_locked() {
    let h = maria_harness();
    let w = world("keep");
    let idle = unique("idle");
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {idle}}}\nspec:\n  options: {{client_idle_timeout: 2s}}\n"
    ));
    let user = unique("mi");
    add_user(&user, &[&w.role, &idle]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[]));

    let mut s = open_mariadb(&files, &user).expect("session starts");
    assert_eq!(s.query("SELECT 1").as_deref(), Some("1"));
    assert_eq!(locked(&user), Some(false));
    h.eventually("account locked after the idle session was closed", || {
        locked(&user) == Some(true)
    });
    assert_eq!(s.query("SELECT 1"), None, "the idle session was closed");
    s.close();
    h.eventually("the session end is audited with its reason", || {
        h.audit_events(&user).iter().any(|e| {
            e["event"] == "db.session.end"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("client_idle_timeout"))
        })
    });
}
