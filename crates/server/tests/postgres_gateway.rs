//! The PostgreSQL gateway end to end: real PostgreSQL, real psql, observed in the catalogs.

mod common;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::process::Stdio;

use common::*;

/// One test's world: a db resource, an admin, db roles and a dbward role that provisions.
struct World {
    db: String,
    admin: String,
    reader: String,
    writer: String,
    role: String,
}

fn world(mode: &str) -> World {
    let h = harness();
    let n = unique("t");
    let w = World {
        db: format!("db-{n}"),
        admin: format!("adm_{n}"),
        reader: format!("reader_{n}"),
        writer: format!("writer_{n}"),
        role: format!("role-{n}"),
    };
    h.create_admin(&w.admin, &[&w.reader, &w.writer]);
    h.sql(&format!(
        "CREATE TABLE IF NOT EXISTS public.{t} (id int); GRANT SELECT ON public.{t} TO {r}; GRANT INSERT ON public.{t} TO {wr};",
        t = q(&format!("tbl_{n}")),
        r = q(&w.reader),
        wr = q(&w.writer)
    ));
    h.apply(&format!(
        r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: {mode}}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_roles: ["{reader}", "{writer}"]
---
{db}
"#,
        role = w.role,
        reader = w.reader,
        writer = w.writer,
        db = h.db_yaml(&w.db, &format!("{{test: \"{n}\"}}"), Some(&w.admin)),
    ));
    w
}

fn add_user(name: &str, roles: &[&str]) {
    let roles = roles
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    harness().apply(&format!(
        "kind: user\nversion: v2\nmetadata: {{name: {name:?}}}\nspec: {{roles: [{roles}]}}\n"
    ));
}

/// An interactive psql through the gateway.
fn open_psql(files: &ClientFiles, user: &str, dbname: &str) -> Result<OpenSession, String> {
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(conninfo(harness().pg_addr, files, user, dbname))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    OpenSession::start(cmd)
}

#[test]
fn keep_mode_activates_during_session_and_locks_after() {
    let h = harness();
    let w = world("keep");
    let user = unique("alice");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));

    let mut s = open_psql(&files, &user, "postgres").expect("session starts");
    assert_eq!(
        s.query("select current_user").as_deref(),
        Some(user.as_str())
    );
    assert_eq!(h.can_login(&user), Some(true));
    assert_eq!(h.memberships(&user), {
        let mut v = [
            "dbward-auto-user".to_string(),
            w.reader.clone(),
            w.writer.clone(),
        ];
        v.sort();
        v.join(",")
    });
    // The granted roles work.
    let t = format!("tbl_{}", &w.db[3..]);
    assert_eq!(
        s.query(&format!("select count(*) from public.{}", q(&t)))
            .as_deref(),
        Some("0")
    );
    s.close();

    // Login is disabled first (its own transaction), then the roles are revoked.
    h.eventually(
        "user locked and its roles revoked after the session",
        || h.can_login(&user) == Some(false) && h.memberships(&user) == "dbward-auto-user",
    );

    // The next session reactivates the same user.
    let r = h.psql(&files, &user, "postgres", "select current_user");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, user);
    h.eventually("user locked again", || h.can_login(&user) == Some(false));

    let events: Vec<String> = h
        .audit_events(&user)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    for wanted in [
        "db.session.start",
        "db.session.user.create",
        "db.session.query",
        "db.session.end",
        "db.session.user.deactivate",
    ] {
        assert!(
            events.iter().any(|e| e == wanted),
            "{wanted} missing in {events:?}"
        );
    }
    let queries: Vec<_> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.query")
        .map(|e| e["db_query"].as_str().unwrap().to_string())
        .collect();
    assert!(
        queries.iter().any(|q| q.contains("current_user")),
        "{queries:?}"
    );

    // The same events reach the JSON-lines file for log shippers.
    let lines = std::fs::read_to_string(h.dir.join("audit.jsonl")).unwrap();
    let mine: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["user"] == user.as_str())
        .collect();
    assert!(mine.iter().any(|e| e["event"] == "db.session.query"
        && e["db_query"]
            .as_str()
            .is_some_and(|q| q.contains("current_user"))));
    assert!(mine
        .iter()
        .all(|e| e["sid"].is_string() && e["db_service"] == w.db.as_str()));
}

#[test]
fn best_effort_drop_removes_user_or_locks_owner_of_objects() {
    let h = harness();
    let w = world("best_effort_drop");
    let user = unique("dropme");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let r = h.psql(&files, &user, "postgres", "select current_user");
    assert!(r.ok, "{r:?}");
    h.eventually("user dropped", || h.can_login(&user).is_none());
    let drops: Vec<_> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.user.deactivate")
        .collect();
    assert_eq!(drops.last().unwrap()["delete"], true);

    // A user that owns a table cannot be dropped: it is locked and the table survives.
    let owner = unique("owner");
    add_user(&owner, &[&w.role]);
    h.sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS s_{0}; GRANT CREATE, USAGE ON SCHEMA s_{0} TO {1}",
        &w.db[3..],
        q(&w.writer)
    ));
    let files = h.db_cert(&owner, route(&w.db, &owner, "postgres", &[]));
    let r = h.psql(
        &files,
        &owner,
        "postgres",
        &format!("create table s_{}.mine (x int)", &w.db[3..]),
    );
    assert!(r.ok, "{r:?}");
    h.eventually("owner locked instead of dropped", || {
        h.can_login(&owner) == Some(false)
    });
    assert_eq!(
        h.sql(&format!(
            "select count(*) from pg_tables where schemaname = 's_{}' and tablename = 'mine'",
            &w.db[3..]
        )),
        "1"
    );
}

#[test]
fn concurrent_sessions_share_the_user_until_the_last_ends() {
    let h = harness();
    let w = world("keep");
    let user = unique("conc");
    add_user(&user, &[&w.role]);
    let all = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let first = open_psql(&all, &user, "postgres").expect("first");
    let mut second = open_psql(&all, &user, "postgres").expect("second");
    first.close();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        h.can_login(&user),
        Some(true),
        "still active while a session is live"
    );
    assert_eq!(second.query("select 1").as_deref(), Some("1"));

    // Different roles while a session is live: refused, the first continues.
    let reader_only = h.db_cert(&user, route(&w.db, &user, "postgres", &[&w.reader]));
    let r = h.psql(&reader_only, &user, "postgres", "select 1");
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&format!("roles for user \"{user}\" have changed. Please quit all active connections and try again.")),
        "{}",
        r.stderr
    );
    assert_eq!(second.query("select 2").as_deref(), Some("2"));
    second.close();
    h.eventually("locked after the last session", || {
        h.can_login(&user) == Some(false)
    });
}

#[test]
fn unmanaged_existing_users_are_refused_and_unchanged() {
    let h = harness();
    let w = world("keep");
    h.sql("DO $$BEGIN CREATE ROLE bob LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$");
    for name in ["postgres", w.admin.as_str(), "bob"] {
        add_user(name, &[&w.role]);
        let before = h.sql(&format!(
            "select rolcanlogin::text || rolcreaterole::text || rolsuper::text from pg_roles where rolname = {}",
            lit(name)
        ));
        let members_before = h.memberships(name);
        let files = h.db_cert(name, route(&w.db, name, "postgres", &[]));
        let r = h.psql(&files, name, "postgres", "select current_user");
        assert!(!r.ok, "{name} must be refused");
        assert!(
            r.stderr.contains(&format!(
                "user \"{name}\" already exists in this database and is not managed by dbward"
            )),
            "{name}: {}",
            r.stderr
        );
        let after = h.sql(&format!(
            "select rolcanlogin::text || rolcreaterole::text || rolsuper::text from pg_roles where rolname = {}",
            lit(name)
        ));
        assert_eq!(before, after);
        assert_eq!(members_before, h.memberships(name));
    }
}

#[test]
fn refusals_are_clear_errors_and_change_nothing() {
    let h = harness();
    let w = world("keep");
    let user = unique("refused");
    add_user(&user, &[&w.role]);

    // Wrong db user name.
    let files = h.db_cert(&user, route(&w.db, "someone", "postgres", &[]));
    let r = h.psql(&files, "someone", "postgres", "select 1");
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&format!(
            "please use your dbward username (\"{user}\") to connect instead of \"someone\""
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("FATAL"), "{}", r.stderr);

    // A role that is not allowed.
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &["superpower"]));
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(
        r.stderr
            .contains("access to database role \"superpower\" denied"),
        "{}",
        r.stderr
    );
    assert_eq!(h.can_login(&user), None, "nothing was created");

    // A role allowed by dbward that does not exist in the database.
    let ghost = unique("ghost_role");
    let n = unique("g");
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: rg-{n}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{\"*\": \"*\"}}\n    db_names: [\"*\"]\n    db_roles: [{ghost}]\n"
    ));
    let guser = unique("guser");
    add_user(&guser, &[&format!("rg-{n}")]);
    let files = h.db_cert(&guser, route(&w.db, &guser, "postgres", &[]));
    let r = h.psql(&files, &guser, "postgres", "select 1");
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&ghost),
        "names the missing role: {}",
        r.stderr
    );
    assert_eq!(h.can_login(&guser), None, "user not left behind");

    // No admin user on the database.
    let noadmin = format!("{}-noadmin", w.db);
    h.apply(&h.db_yaml(&noadmin, &format!("{{test: \"{}\"}}", &w.db[3..]), None));
    let files = h.db_cert(&user, route(&noadmin, &user, "postgres", &[]));
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(!r.ok);
    assert!(r.stderr.contains("admin"), "{}", r.stderr);

    // Admin without CREATEROLE.
    h.sql(&format!("ALTER ROLE {} NOCREATEROLE", q(&w.admin)));
    let weak_user = unique("weak");
    add_user(&weak_user, &[&w.role]);
    let files = h.db_cert(&weak_user, route(&w.db, &weak_user, "postgres", &[]));
    let r = h.psql(&files, &weak_user, "postgres", "select 1");
    assert!(!r.ok);
    // The client gets the generic text with its session id; the admin's name and the fix
    // are for the log and `dbward db check`.
    assert!(
        r.stderr
            .contains("database user provisioning failed (session ")
            && !r.stderr.contains(&w.admin),
        "{}",
        r.stderr
    );
    assert_eq!(h.can_login(&weak_user), None);
    h.sql(&format!("ALTER ROLE {} CREATEROLE", q(&w.admin)));
}

#[test]
fn unusual_names_work_and_long_names_are_hashed() {
    let h = harness();
    let w = world("keep");
    let long = format!("{}{}", unique("l"), "x".repeat(80));
    for name in [
        format!("o'{}", unique("q")),
        format!("with space {}", unique("s")),
        format!("jürgen-ß-{}", unique("u")),
        long.clone(),
    ] {
        add_user(&name, &[&w.role]);
        let files = h.db_cert(&name, route(&w.db, &name, "postgres", &[]));
        let r = h.psql(&files, &name, "postgres", "select current_user");
        assert!(r.ok, "{name}: {r:?}");
        let expected = dbward_provision::names::pg_name(&name);
        assert_eq!(r.stdout, expected);
        if name.len() > 63 {
            assert!(expected.starts_with("dw-"), "{expected}");
            assert!(expected.len() <= 63);
        } else {
            assert_eq!(expected, name);
        }
        h.eventually("locked", || h.can_login(&expected) == Some(false));
    }
}

#[test]
fn ctrl_c_cancel_reaches_the_backend() {
    let h = harness();
    let w = world("keep");
    let user = unique("cancel");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let child = h
        .psql_command(&files, &user, "postgres", "select pg_sleep(30)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    h.eventually("query running", || {
        h.sql(&format!(
            "select count(*) from pg_stat_activity where usename = {} and query like '%pg_sleep(30)%' and state = 'active'",
            lit(&user)
        )) == "1"
    });
    let started = std::time::Instant::now();
    // psql sends a plain CancelRequest on SIGINT.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT to psql");
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
}

#[test]
fn killed_client_still_gets_teardown() {
    let h = harness();
    let w = world("keep");
    let user = unique("killed");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let mut child = h
        .psql_command(&files, &user, "postgres", "select pg_sleep(60)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    h.eventually("session active", || h.can_login(&user) == Some(true));
    child.kill().unwrap();
    let _ = child.wait();
    h.eventually("locked after the client was killed", || {
        h.can_login(&user) == Some(false)
    });
}

#[test]
fn plaintext_and_garbage_are_refused_without_harm() {
    use std::io::Read;
    let h = harness();
    // Plaintext startup: an ErrorResponse with 28000.
    let mut s = std::net::TcpStream::connect(h.pg_addr).unwrap();
    let mut msg = Vec::new();
    let body = b"\x00\x03\x00\x00user\x00x\x00\x00";
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&b'E'));
    assert!(String::from_utf8_lossy(&reply).contains("28000"));
    // Garbage: the connection closes; the listener keeps serving.
    let mut g = std::net::TcpStream::connect(h.pg_addr).unwrap();
    let _ = g.write_all(&[0xff; 64]);
    let mut sink = Vec::new();
    let _ = g.read_to_end(&mut sink);
    let w = world("keep");
    let user = unique("after");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    assert!(h.psql(&files, &user, "postgres", "select 1").ok);
}

#[test]
fn certificate_from_another_ca_is_refused_at_handshake() {
    let h = harness();
    let other = dbward_pki::CaSet::generate("other").unwrap();
    let dir = h.dir.join(unique("foreign"));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, csr) = dbward_pki::new_key_and_csr("mallory").unwrap();
    let identity = dbward_pki::Identity {
        username: "mallory".into(),
        cluster: h.gw.cluster.clone(),
        usage: dbward_pki::CertUsage::Db,
        expires: time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(600),
        route: Some(route("x", "mallory", "postgres", &[])),
        pinned_ip: None,
        mfa_session_until: None,
    };
    let cert = dbward_pki::issue_user_cert(&other.user, &identity, &csr).unwrap();
    let files = ClientFiles {
        crt: dir.join("c.pem"),
        key: dir.join("k.pem"),
        ca: h.host_ca.clone(),
    };
    std::fs::write(&files.crt, cert).unwrap();
    dbward_pki::write_private_file(&files.key, key.as_bytes()).unwrap();
    let r = h.psql(&files, "mallory", "postgres", "select 1");
    assert!(!r.ok);
    assert!(!r.stderr.is_empty());
}

#[test]
fn provisioning_off_connects_as_an_allowed_db_user() {
    let h = harness();
    let n = unique("off");
    let dbuser = format!("app_{n}");
    h.sql(&format!("CREATE ROLE {} LOGIN", q(&dbuser)));
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: ro-{n}}}\nspec:\n  allow:\n    db_labels: {{off: \"{n}\"}}\n    db_names: [\"*\"]\n    db_users: [\"{dbuser}\"]\n---\n{}",
        h.db_yaml(&format!("dboff-{n}"), &format!("{{off: \"{n}\"}}"), None)
    ));
    let user = unique("carol");
    add_user(&user, &[&format!("ro-{n}")]);
    let files = h.db_cert(
        &user,
        route(&format!("dboff-{n}"), &dbuser, "postgres", &[]),
    );
    let r = h.psql(&files, &dbuser, "postgres", "select current_user");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, dbuser);
    let r = h.psql(&files, "postgres", "postgres", "select current_user");
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "access to db denied. User does not have permissions. Confirm database user and name."
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn deleting_the_user_ends_the_live_session() {
    let h = harness();
    let w = world("keep");
    let user = unique("revoked");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let mut s = open_psql(&files, &user, "postgres").expect("session");
    assert_eq!(s.query("select 1").as_deref(), Some("1"));
    h.delete("user", &user);
    h.eventually("locked after revocation", || {
        h.can_login(&user) == Some(false)
    });
    assert_eq!(s.query("select 1"), None, "the session was closed");
    s.close();
}

/// A Rust driver through the gateway: simple and extended protocol, audit of both, and a
/// CancelRequest (over TLS) from the driver's cancel token.
#[test]
fn tokio_postgres_works_through_the_gateway_and_can_cancel() {
    let h = harness();
    let w = world("keep");
    let user = unique("driver");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let cert = std::fs::read_to_string(&files.crt).unwrap();
    let key = std::fs::read_to_string(&files.key).unwrap();
    let tls = dbward_pki::client_config(
        Some(&h.gw.cas.host.cert_pem),
        dbward_pki::ServerVerification::Full,
        Some((&cert, &key)),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config
            .host("localhost")
            .port(h.pg_addr.port())
            .user(&user)
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let connector = dbward_provision::postgres::MakeRustlsConnect::new(tls, "localhost");
        let (client, connection) = config.connect(connector.clone()).await.expect("connects");
        let conn_task = tokio::spawn(connection);

        let row = client
            .query_one("select current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        let n: i32 = client
            .query_one("select $1::int + 1", &[&41i32])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 42);

        let cancel = client.cancel_token();
        let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // Over TLS this time (psql's SIGINT test covers the plain CancelRequest).
        cancel
            .cancel_query(connector)
            .await
            .expect("cancel request sent");
        let result = tokio::time::timeout(std::time::Duration::from_secs(15), sleeper)
            .await
            .expect("cancelled in time")
            .unwrap();
        let err = result.expect_err("the statement was cancelled");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
        );
        conn_task.abort();
    });
    h.eventually("locked after the driver left", || {
        h.can_login(&user) == Some(false)
    });
    let parsed: Vec<String> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.query")
        .filter_map(|e| e["db_query"].as_str().map(str::to_string))
        .collect();
    assert!(
        parsed.iter().any(|q| q.contains("$1::int + 1")),
        "{parsed:?}"
    );
}

/// PostgreSQL 17 direct TLS: TLS from the first byte with ALPN `postgresql`.
#[test]
fn direct_tls_startup_is_accepted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    let w = world("keep");
    let user = unique("direct");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let cert = std::fs::read_to_string(&files.crt).unwrap();
    let key = std::fs::read_to_string(&files.key).unwrap();
    let tls = dbward_pki::client_config(
        Some(&h.gw.cas.host.cert_pem),
        dbward_pki::ServerVerification::Full,
        Some((&cert, &key)),
    )
    .unwrap();
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(h.pg_addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = connector
            .connect(name, tcp)
            .await
            .expect("direct TLS handshake");
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for (k, v) in [("user", user.as_str()), ("database", "postgres")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        s.write_all(&msg).await.unwrap();
        let mut kind = [0u8; 1];
        s.read_exact(&mut kind).await.unwrap();
        let during = h.can_login(&user);
        s.write_all(b"X\x00\x00\x00\x04").await.unwrap();
        let _ = s.shutdown().await;
        (kind[0], during)
    });
    assert_eq!(first.0, b'R', "AuthenticationOk first");
    assert_eq!(first.1, Some(true), "provisioned while connected");
    h.eventually("locked afterwards", || h.can_login(&user) == Some(false));
}

/// A user left active by a crash (no session anywhere) is found and locked by the
/// reconciler; a user with a live session is left alone.
#[test]
fn reconciler_locks_users_left_active_by_a_crash() {
    let h = harness();
    let w = world("keep");
    let leftover = unique("crashed");
    let live = unique("alive");
    add_user(&leftover, &[&w.role]);
    add_user(&live, &[&w.role]);
    // Simulate a crash: activate directly, as a killed gateway would have left it.
    let snapshot = h.block_on(h.gw.catalog.snapshot()).unwrap();
    let db = snapshot.dbs.get(&w.db).unwrap().clone();
    let admin = dbward_provision::postgres::AdminTarget {
        engine: dbward_provision::Engine::Postgres,
        host: "127.0.0.1".into(),
        port: h.pg().port,
        server_name: "localhost".into(),
        client_config: h
            .gw
            .upstream
            .target(&h.gw.cas, &db, &w.admin)
            .ok()
            .unwrap()
            .tls,
        admin_user: w.admin.clone(),
        database: "postgres".into(),
        allowed_predefined_roles: Vec::new(),
    };
    h.block_on(h.gw.provisioners.postgres().activate(
        &admin,
        &dbward_provision::DbUserName::new(leftover.clone()),
        std::slice::from_ref(&w.reader),
    ))
    .unwrap();
    assert_eq!(h.can_login(&leftover), Some(true));
    let files = h.db_cert(&live, route(&w.db, &live, "postgres", &[]));
    let mut session = open_psql(&files, &live, "postgres").expect("live session");

    h.block_on(dbward_server::session::reconcile_once(&h.gw))
        .unwrap();
    assert_eq!(
        h.can_login(&leftover),
        Some(false),
        "the leftover is locked"
    );
    assert_eq!(h.memberships(&leftover), "dbward-auto-user");
    assert_eq!(
        h.can_login(&live),
        Some(true),
        "a live session is untouched"
    );
    assert_eq!(session.query("select 1").as_deref(), Some("1"));
    session.close();
}

/// A session outlives its certificate only by the revocation check's period: then it ends
/// and the user is torn down.
#[test]
fn expired_certificate_ends_the_live_session() {
    let h = harness();
    let w = world("keep");
    let user = unique("expiring");
    add_user(&user, &[&w.role]);
    let files = h.db_cert_valid_for(
        &user,
        route(&w.db, &user, "postgres", &[]),
        std::time::Duration::from_secs(4),
    );
    let mut s = open_psql(&files, &user, "postgres").expect("session");
    assert_eq!(s.query("select 1").as_deref(), Some("1"));
    h.eventually("locked after the certificate expired", || {
        h.can_login(&user) == Some(false)
    });
    assert_eq!(s.query("select 1"), None, "the session was closed");
    s.close();
}

/// A client that goes away in the middle of the handshake, or sends garbage after the TLS
/// upgrade, costs only its own connection.
#[test]
fn broken_handshakes_leave_the_listener_serving() {
    use std::io::Read;
    let h = harness();
    // Half a startup packet, then gone.
    let mut s = std::net::TcpStream::connect(h.pg_addr).unwrap();
    s.write_all(&[0, 0, 0, 8, 4]).unwrap();
    drop(s);
    // An SSLRequest, then garbage instead of a ClientHello.
    let mut s = std::net::TcpStream::connect(h.pg_addr).unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"S");
    let _ = s.write_all(&[0x42; 300]);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // The listener still serves a real client.
    let w = world("keep");
    let user = unique("stillok");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let r = h.psql(&files, &user, "postgres", "select current_user");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, user);
}

/// An edited `db` resource takes effect at the next connection: nothing is served from
/// material cached for its old address.
#[test]
fn edited_db_resource_applies_to_the_next_connection() {
    let h = harness();
    let w = world("keep");
    let user = unique("moved");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    assert!(h.psql(&files, &user, "postgres", "select 1").ok);
    h.eventually("locked", || h.can_login(&user) == Some(false));

    // Point the resource at a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let label = &w.db[3..];
    let moved = h
        .db_yaml(&w.db, &format!("{{test: \"{label}\"}}"), Some(&w.admin))
        .replace(
            &format!("127.0.0.1:{}", h.pg().port),
            &format!("127.0.0.1:{closed}"),
        );
    h.apply(&moved);
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(!r.ok, "the old address must not be used: {r:?}");
    assert_eq!(h.can_login(&user), Some(false), "nothing was activated");
}

/// `PGOPTIONS='-c role=…'` or `options=…` in the connection string would make the session
/// run as another role (the marker role is one the user belongs to) while the audit names
/// the provisioned user: refused before anything reaches the database.
#[test]
fn startup_parameters_that_set_the_role_are_refused() {
    let h = harness();
    let w = world("keep");
    let user = unique("pgoptions");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let probe = "select current_user || ' ' || session_user";

    for options in [
        "-c role=dbward-auto-user",
        "-crole=dbward-auto-user",
        "--role=dbward-auto-user",
        "-c ROLE=dbward-auto-user",
        "-c session_authorization=dbward-auto-user",
        &format!("-c role={}", w.reader),
    ] {
        let out = h
            .psql_command(&files, &user, "postgres", probe)
            .env("PGOPTIONS", options)
            .output()
            .unwrap();
        let r = PsqlResult::from(out);
        assert!(!r.ok, "PGOPTIONS={options:?} was accepted: {r:?}");
        assert!(
            r.stderr.contains("startup parameter"),
            "PGOPTIONS={options:?}: {}",
            r.stderr
        );
    }
    // The same through the connection string.
    let out = std::process::Command::new("psql")
        .arg(format!(
            "{} options='-c\\ role=dbward-auto-user'",
            conninfo(h.pg_addr, &files, &user, "postgres")
        ))
        .args(["-X", "-A", "-t", "-c", probe])
        .output()
        .unwrap();
    let r = PsqlResult::from(out);
    assert!(!r.ok, "options in the connection string accepted: {r:?}");
    assert!(r.stderr.contains("42501") || r.stderr.contains("startup parameter"));
    // Nothing reached the database: the user was never even created.
    assert_eq!(h.can_login(&user), None);

    // An ordinary setting passes, and the session is the provisioned user's.
    let out = h
        .psql_command(
            &files,
            &user,
            "postgres",
            "select current_user || ' ' || session_user || ' ' || current_setting('statement_timeout')",
        )
        .env("PGOPTIONS", "-c statement_timeout=4321")
        .output()
        .unwrap();
    let r = PsqlResult::from(out);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, format!("{user} {user} 4321ms"));
}

/// Top-level startup parameters that psql cannot send (`role`, `session_authorization`,
/// `replication`), from a client speaking the protocol itself: refused with 42501.
#[test]
fn top_level_identity_parameters_are_refused_with_42501() {
    let h = harness();
    let w = world("keep");
    let user = unique("rawstartup");
    add_user(&user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let tls = dbward_pki::client_config(
        Some(&std::fs::read_to_string(&files.ca).unwrap()),
        dbward_pki::ServerVerification::Full,
        Some((
            &std::fs::read_to_string(&files.crt).unwrap(),
            &std::fs::read_to_string(&files.key).unwrap(),
        )),
    )
    .unwrap();
    for (name, value) in [
        ("role", "dbward-auto-user"),
        ("Session_Authorization", "postgres"),
        ("replication", "database"),
    ] {
        let params: Vec<(String, String)> = [
            ("user", user.as_str()),
            ("database", "postgres"),
            (name, value),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let connected = h.block_on(dbward_proxy::pg::upstream::connect(
            ("127.0.0.1", h.pg_addr.port()),
            tls.clone(),
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            &params,
        ));
        match connected {
            Err(dbward_proxy::UpstreamError::Server {
                sqlstate, message, ..
            }) => {
                assert_eq!(sqlstate, "42501", "{name}");
                assert!(message.contains(&name.to_ascii_lowercase()), "{message}");
            }
            Err(other) => panic!("{name}: {other}"),
            Ok(_) => panic!("{name}={value} was accepted"),
        }
    }
    assert_eq!(h.can_login(&user), None, "nothing reached the database");
}
