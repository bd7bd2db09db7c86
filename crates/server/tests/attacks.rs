//! Attacks by a provisioned user on the privilege boundary (PROVISIONING.md §8), through the
//! gateway against real PostgreSQL: each test is an attack that once worked, and asserts
//! what the database catalogs show afterwards.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A db resource with an admin, one db role, and a dbward role that provisions with `mode`.
struct World {
    db: String,
    reader: String,
    role: String,
}

fn world(mode: &str) -> World {
    let h = harness();
    let n = unique("a");
    let w = World {
        db: format!("db-{n}"),
        reader: format!("reader_{n}"),
        role: format!("role-{n}"),
    };
    let admin = format!("adm_{n}");
    h.create_admin(&admin, &[&w.reader]);
    h.apply(&format!(
        r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: {mode}}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_roles: ["{reader}"]
---
{db}
"#,
        role = w.role,
        reader = w.reader,
        db = h.db_yaml(&w.db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    w
}

fn add_user(h: &Harness, name: &str, roles: &[&str]) {
    let roles = roles
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    h.apply(&format!(
        "kind: user\nversion: v2\nmetadata: {{name: {name:?}}}\nspec: {{roles: [{roles}]}}\n"
    ));
}

/// Backends of `role` in the whole cluster.
fn backends(role: &str) -> i64 {
    harness()
        .sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {}",
            lit(role)
        ))
        .parse()
        .unwrap_or(-1)
}

/// Polls `check` for up to `limit`.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A statement that swallows cancel requests: the backend keeps running, with the user's
/// roles, after the client is gone, unless the gateway terminates it.
const CANCEL_PROOF: &str = "DO $$BEGIN LOOP BEGIN PERFORM pg_catalog.pg_sleep(3600); \
     EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END$$";

/// The client is killed while its statement ignores the cancel the gateway sends.
#[test]
fn backend_that_ignores_cancel_does_not_outlive_its_session() {
    let h = harness();
    let w = world("keep");
    let user = unique("linger");
    add_user(h, &user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[&w.reader]));
    let mut child = h
        .psql_command(&files, &user, "postgres", CANCEL_PROOF)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    h.eventually("session busy", || {
        h.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {} AND state = 'active'",
            lit(&user)
        )) == "1"
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        within(Duration::from_secs(30), || backends(&user) == 0
            && h.can_login(&user) == Some(false)),
        "backend still running ({}) and login {:?} after the session ended",
        backends(&user),
        h.can_login(&user)
    );
    assert_eq!(h.memberships(&user), "dbward-auto-user");
}

/// A MariaDB db resource whose admin has what provisioning and ending connections need.
fn maria_world(mode: &str) -> World {
    let h = maria_harness();
    let n = unique("m");
    let w = World {
        db: format!("my-{n}"),
        reader: format!("reader_{n}"),
        role: format!("role-{n}"),
    };
    let admin = format!("adm_{n}");
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
         CREATE ROLE `{r}` WITH ADMIN '{a}'@'%';",
        a = admin,
        r = w.reader,
    ));
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: {mode}}}\n  allow:\n    db_labels: {{test: \"{n}\"}}\n    db_roles: [\"{reader}\"]\n---\n{db}\n",
        role = w.role,
        reader = w.reader,
        db = h.maria_db_yaml(&w.db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    w
}

/// Connections of 'user' in MariaDB's process list.
fn maria_connections(user: &str) -> i64 {
    maria_harness()
        .maria_sql(&format!(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = {}",
            lit(user)
        ))
        .parse()
        .unwrap_or(-1)
}

fn maria_locked(user: &str) -> Option<bool> {
    let out = maria_harness().maria_sql(&format!(
        "SELECT IFNULL(JSON_VALUE(Priv, '$.account_locked'), 'false') FROM mysql.global_priv WHERE User = {} AND Host = '%'",
        lit(user)
    ));
    match out.as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A statement that never looks at its socket: MariaDB notices a vanished client only once
/// the statement ends, so the connection runs on with the user's roles unless the gateway
/// kills it.
#[test]
fn mariadb_busy_connection_does_not_outlive_its_session() {
    let h = maria_harness();
    let w = maria_world("keep");
    let user = unique("mbusy");
    add_user(h, &user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "", &[&w.reader]));
    let mut child = h
        .mariadb_command(
            &files,
            &user,
            "SELECT BENCHMARK(999999999999, SHA2(RAND(), 512))",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    h.eventually("session busy", || {
        h.maria_sql(&format!(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = {} AND COMMAND = 'Query'",
            lit(&user)
        )) == "1"
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        within(Duration::from_secs(30), || maria_connections(&user) == 0
            && maria_locked(&user) == Some(true)),
        "connection still running ({}) and locked {:?} after the session ended",
        maria_connections(&user),
        maria_locked(&user)
    );
}

/// A client packet with sequence id 255 makes the gateway take the next packet with id 0 for
/// the continuation of a LOAD DATA LOCAL exchange; if the server took that packet for a
/// command instead, a COM_CHANGE_USER would get through unseen.
#[test]
fn change_user_after_a_wrapped_sequence_id_is_never_executed() {
    use dbward_proxy::mysql::packet;
    let h = maria_harness();
    let w = maria_world("keep");
    let user = unique("wrap");
    add_user(h, &user, &[&w.role]);
    let target = unique("svc_wrap");
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
    let mut answers = Vec::new();
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
        let mut change = vec![0x11u8];
        change.extend_from_slice(target.as_bytes());
        change.extend_from_slice(&[0, 0, 0, 45, 0]);
        change.extend_from_slice(b"mysql_native_password\0");
        // Sequence id 255 on a ping, then COM_CHANGE_USER with sequence id 0, in one write
        // and in two.
        let mut both = Vec::new();
        for (seq, payload) in [(255u8, &[0x0eu8][..]), (0, &change[..])] {
            let len = payload.len() as u32;
            both.extend_from_slice(&len.to_le_bytes()[..3]);
            both.push(seq);
            both.extend_from_slice(payload);
        }
        use tokio::io::AsyncWriteExt;
        let _ = session.stream.write_all(&both).await;
        let _ = session.stream.flush().await;
        for _ in 0..2 {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                packet::read_packet(&mut session.stream, 1 << 20),
            )
            .await;
            match answer {
                Ok(Ok(reply)) => answers.push(reply.payload.first().copied()),
                _ => break,
            }
        }
    });
    assert_eq!(
        h.maria_sql(&format!(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = {}",
            lit(&target)
        )),
        "0",
        "a session ran as the other account (answers {answers:?})"
    );
}

/// The fast-path `FunctionCall` message runs a function by OID without any SQL text (libpq's
/// large-object calls use it): the audit must still record that something ran.
#[test]
fn fast_path_function_calls_are_audited() {
    let h = harness();
    let w = world("keep");
    let user = unique("fastpath");
    add_user(h, &user, &[&w.role]);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[&w.reader]));
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::write(&payload, b"written without a statement").unwrap();
    let out = h.psql(
        &files,
        &user,
        "postgres",
        &format!("\\lo_import {}", payload.display()),
    );
    assert!(out.ok, "{}", out.stderr);
    h.eventually("session ended", || h.can_login(&user) == Some(false));
    let queries: Vec<String> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.query")
        .filter_map(|e| e["db_query"].as_str().map(str::to_string))
        .collect();
    assert!(
        queries.iter().any(|q| q.contains("FunctionCall")),
        "no audit record of the fast-path calls in {queries:?}"
    );
}
