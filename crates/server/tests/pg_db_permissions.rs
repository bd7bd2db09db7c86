//! Database Access Controls (`db_permissions`, PROVISIONING.md §6) through the PostgreSQL
//! gateway: real PostgreSQL, real psql, privileges observed in the catalogs.
//!
//! No import rule exists in this test binary's store, so the default rule labels every table
//! (`object_kind`, `database`, `schema`, `name`, `protocol`, `database_service_name`); import
//! rules are tested in `pg_import_rules.rs`, a store of its own.

mod common;

use common::*;

/// A database `name` on the test server with `public.orders` (2 rows), `public.customers`
/// and `public.secrets`, and `sales.invoices`, all owned by the superuser; the admin holds
/// every privilege on them WITH GRANT OPTION, as the setup guide asks; on
/// `public.audit_log`, created afterwards, it holds nothing.
fn shop(h: &Harness, name: &str, admin: &str) {
    h.sql(&format!("CREATE DATABASE {}", q(name)));
    h.pg()
        .psql_super_in(
            name,
            &format!(
                "CREATE TABLE public.orders (id int); INSERT INTO public.orders VALUES (1), (2);
                 CREATE TABLE public.customers (id int);
                 CREATE TABLE public.secrets (id int);
                 CREATE SCHEMA sales; CREATE TABLE sales.invoices (id int);
                 GRANT ALL ON ALL TABLES IN SCHEMA public, sales TO {a} WITH GRANT OPTION;
                 GRANT USAGE ON SCHEMA sales TO {a} WITH GRANT OPTION;
                 CREATE TABLE public.audit_log (id int);",
                a = q(admin)
            ),
        )
        .unwrap_or_else(|e| panic!("shop setup: {e:#}"));
}

/// `schema.table:PRIVILEGE` granted to `user` itself in `database`.
fn privileges(h: &Harness, database: &str, user: &str) -> Vec<String> {
    let out = h
        .pg()
        .psql_super_in(
            database,
            &format!(
                "SELECT n.nspname || '.' || c.relname || ':' || a.privilege_type \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, \
                 aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee \
                 WHERE r.rolname = {} ORDER BY 1",
                lit(user)
            ),
        )
        .unwrap();
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn schema_usage(h: &Harness, database: &str, user: &str) -> Vec<String> {
    let out = h
        .pg()
        .psql_super_in(
            database,
            &format!(
                "SELECT s.nspname FROM pg_namespace s, aclexplode(s.nspacl) a \
                 JOIN pg_roles r ON r.oid = a.grantee WHERE r.rolname = {} ORDER BY 1",
                lit(user)
            ),
        )
        .unwrap();
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
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

fn open_psql(files: &ClientFiles, user: &str, dbname: &str) -> Result<OpenSession, String> {
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(conninfo(harness().pg_addr, files, user, dbname))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    OpenSession::start(cmd)
}

/// The PostgreSQL guide's `read_all_tables` role, byte for byte.
const READ_ALL_TABLES: &str = "kind: role
metadata:
  name: read_all_tables
spec:
  options:
    # create_db_user_mode enables automatic user provisioning for matching databases
    create_db_user_mode: keep
  allow:
    db_labels:
      '*': '*'
    db_names:
    - '*'
    db_permissions:
    # grant `SELECT` on all tables in `public` schema.
    - match:
        # object labels to match
        object_kind: table
        schema: public
      permissions:
      - SELECT
version: v7
";

#[test]
fn the_guides_read_all_tables_role_reads_public_tables_and_nothing_else() {
    let h = harness();
    let n = unique("g");
    let (db, admin, database) = (format!("db-{n}"), format!("adm_{n}"), format!("shop_{n}"));
    h.create_admin(&admin, &[]);
    shop(h, &database, &admin);
    h.apply(READ_ALL_TABLES);
    h.apply(&h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)));
    let user = unique("reader");
    add_user(&user, &["read_all_tables"]);
    let files = h.db_cert(&user, route(&db, &user, &database, &[]));

    let mut s = open_psql(&files, &user, &database).expect("session starts");
    assert_eq!(
        s.query("SELECT count(*) FROM public.orders").as_deref(),
        Some("2")
    );
    assert_eq!(
        privileges(h, &database, &user),
        [
            "public.customers:SELECT",
            "public.orders:SELECT",
            "public.secrets:SELECT"
        ]
    );
    // USAGE on `public` comes from PUBLIC; nothing to grant there.
    s.close();

    let insert = h.psql(
        &files,
        &user,
        &database,
        "INSERT INTO public.orders VALUES (3)",
    );
    assert!(!insert.ok, "{insert:?}");
    assert!(
        insert.stderr.contains("permission denied for table orders"),
        "{insert:?}"
    );
    // The rule selects audit_log too, but the admin cannot share it: the session goes
    // without that one table, and the audit event says so.
    let ungrantable = h.psql(&files, &user, &database, "SELECT * FROM public.audit_log");
    assert!(
        ungrantable
            .stderr
            .contains("permission denied for table audit_log"),
        "{ungrantable:?}"
    );
    let other_schema = h.psql(&files, &user, &database, "SELECT * FROM sales.invoices");
    assert!(!other_schema.ok, "{other_schema:?}");
    assert!(
        other_schema.stderr.contains("permission denied"),
        "{other_schema:?}"
    );

    // keep: locked at the end, and nothing granted is left behind.
    h.eventually("user locked and privileges revoked", || {
        h.can_login(&user) == Some(false) && privileges(h, &database, &user).is_empty()
    });
    assert!(schema_usage(h, &database, &user).is_empty());
    assert_eq!(h.memberships(&user), "dbward-auto-user");

    let updates: Vec<serde_json::Value> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.permissions.update")
        .collect();
    assert!(
        !updates.is_empty(),
        "no db.session.permissions.update event"
    );
    let event = &updates[0];
    assert_eq!(event["affected_object_counts"]["table"], 3, "{event}");
    assert_eq!(
        event["permission_summary"],
        serde_json::json!([{"permission": "SELECT", "counts": {"table": 3}}]),
        "{event}"
    );
    assert_eq!(event["db_name"], database.as_str());
    assert_eq!(
        event["not_granted"],
        serde_json::json!(["SELECT on TABLE public.audit_log"]),
        "{event}"
    );
}

#[test]
fn deny_entries_take_away_and_drop_mode_leaves_no_grant_in_two_databases() {
    let h = harness();
    let n = unique("d");
    let (db, admin) = (format!("db-{n}"), format!("adm_{n}"));
    let (first, second) = (format!("a_{n}"), format!("b_{n}"));
    h.create_admin(&admin, &[]);
    shop(h, &first, &admin);
    shop(h, &second, &admin);
    let role = format!("writer-{n}");
    h.apply(&format!(
        r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: best_effort_drop}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_permissions:
    - match: {{object_kind: table}}
      permissions: [select, INSERT]
  deny:
    db_labels: {{test: "{n}"}}
    db_permissions:
    - match: {{name: secrets}}
      permissions: ["*"]
    - match: {{schema: sales}}
      permissions: [INSERT]
---
{db}
"#,
        db = h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    let user = unique("writer");
    add_user(&user, &[&role]);
    let in_first = h.db_cert(&user, route(&db, &user, &first, &[]));
    let in_second = h.db_cert(&user, route(&db, &user, &second, &[]));

    let mut a = open_psql(&in_first, &user, &first).expect("session in the first database");
    let mut b = open_psql(&in_second, &user, &second).expect("session in the second database");
    let expected = [
        "public.customers:INSERT",
        "public.customers:SELECT",
        "public.orders:INSERT",
        "public.orders:SELECT",
        "sales.invoices:SELECT",
    ];
    assert_eq!(privileges(h, &first, &user), expected);
    assert_eq!(privileges(h, &second, &user), expected);
    assert_eq!(schema_usage(h, &first, &user), ["sales"]);
    assert_eq!(
        a.query("INSERT INTO public.orders VALUES (9) RETURNING id")
            .as_deref(),
        Some("9")
    );
    assert_eq!(
        b.query("SELECT count(*) FROM sales.invoices").as_deref(),
        Some("0")
    );

    // The first database's session ends: its grants go, the other session keeps its own.
    a.close();
    h.eventually("privileges in the first database revoked", || {
        privileges(h, &first, &user).is_empty() && schema_usage(h, &first, &user).is_empty()
    });
    assert_eq!(schema_usage(h, &second, &user), ["sales"]);
    assert_eq!(privileges(h, &second, &user), expected);
    assert_eq!(h.can_login(&user), Some(true));
    assert_eq!(
        b.query("SELECT count(*) FROM public.orders").as_deref(),
        Some("2")
    );

    // The last session ends: nothing keeps the drop from happening.
    b.close();
    h.eventually("user dropped", || h.can_login(&user).is_none());
    let deactivations: Vec<serde_json::Value> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.user.deactivate")
        .collect();
    assert!(
        deactivations.iter().any(|e| e["delete"] == true),
        "{deactivations:?}"
    );
}

#[test]
fn a_second_session_with_other_permissions_is_refused_while_the_first_is_live() {
    let h = harness();
    let n = unique("l");
    let (db, admin, database) = (format!("db-{n}"), format!("adm_{n}"), format!("shop_{n}"));
    h.create_admin(&admin, &[]);
    shop(h, &database, &admin);
    let role = format!("live-{n}");
    let role_yaml = |permissions: &str| {
        format!(
            r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: keep}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_permissions:
    - match: {{name: orders}}
      permissions: [{permissions}]
"#
        )
    };
    h.apply(&role_yaml("SELECT"));
    h.apply(&h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)));
    let user = unique("live");
    add_user(&user, &[&role]);
    let files = h.db_cert(&user, route(&db, &user, &database, &[]));

    let mut first = open_psql(&files, &user, &database).expect("first session");
    // Same permissions: a second session joins the first.
    let same = h.psql(
        &files,
        &user,
        &database,
        "SELECT count(*) FROM public.orders",
    );
    assert!(same.ok, "{same:?}");
    assert_eq!(same.stdout, "2");

    h.apply(&role_yaml("SELECT, DELETE"));
    let other = h.psql(&files, &user, &database, "SELECT 1");
    assert!(!other.ok, "{other:?}");
    assert!(
        other.stderr.contains("another session") && other.stderr.contains("different permissions"),
        "{other:?}"
    );
    // The live session's grants are untouched.
    assert_eq!(privileges(h, &database, &user), ["public.orders:SELECT"]);
    assert_eq!(
        first.query("SELECT count(*) FROM public.orders").as_deref(),
        Some("2")
    );
    first.close();
    h.eventually("privileges revoked after the last session", || {
        privileges(h, &database, &user).is_empty()
    });
    // Alone again, the new permissions apply.
    let after = h.psql(
        &files,
        &user,
        &database,
        "DELETE FROM public.orders WHERE false",
    );
    assert!(after.ok, "{after:?}");
}

#[test]
fn db_roles_and_db_permissions_together_are_refused_with_the_documented_message() {
    let h = harness();
    let n = unique("m");
    let (db, admin, database) = (format!("db-{n}"), format!("adm_{n}"), format!("shop_{n}"));
    let reader = format!("reader_{n}");
    h.create_admin(&admin, &[&reader]);
    shop(h, &database, &admin);
    let role = format!("both-{n}");
    h.apply(&format!(
        r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: keep}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_roles: [{reader}]
    db_permissions:
    - match: {{object_kind: table}}
      permissions: [SELECT]
---
{db}
"#,
        db = h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    let user = unique("both");
    add_user(&user, &[&role]);
    let files = h.db_cert(&user, route(&db, &user, &database, &[]));

    let r = h.psql(&files, &user, &database, "SELECT 1");

    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr.contains(
            "fine-grained database permissions and database roles are mutually exclusive"
        ),
        "{r:?}"
    );
    assert_eq!(h.can_login(&user), None, "nothing was created");
}

/// TRIGGER lets a user run its code as everyone who writes to the table, and a trigger
/// outlives the session: it is only granted where the `db` resource says so.
#[test]
fn trigger_is_granted_only_where_the_db_resource_allows_it() {
    let h = harness();
    let n = unique("t");
    let admin = format!("adm_{n}");
    h.create_admin(&admin, &[]);
    let role = format!("trig-{n}");
    h.apply(&format!(
        r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: keep}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_permissions:
    - match: {{name: orders}}
      permissions: [SELECT, TRIGGER]
"#
    ));
    let user = unique("trig");
    add_user(&user, &[&role]);
    for (allowed, labels) in [
        (false, format!("{{test: \"{n}\"}}")),
        (
            true,
            format!("{{test: \"{n}\", dbward.dev/allow-trigger-permission: \"true\"}}"),
        ),
    ] {
        let db = format!("db-{n}-{allowed}");
        let database = format!("shop_{n}_{allowed}");
        shop(h, &database, &admin);
        h.apply(&h.db_yaml(&db, &labels, Some(&admin)));
        let files = h.db_cert(&user, route(&db, &user, &database, &[]));
        let s = open_psql(&files, &user, &database).expect("session starts");
        let expected: &[&str] = if allowed {
            &["public.orders:SELECT", "public.orders:TRIGGER"]
        } else {
            &["public.orders:SELECT"]
        };
        assert_eq!(
            privileges(h, &database, &user),
            expected,
            "allowed: {allowed}"
        );
        s.close();
        h.eventually("privileges revoked", || {
            privileges(h, &database, &user).is_empty()
        });
    }
    let events: Vec<serde_json::Value> = h
        .audit_events(&user)
        .into_iter()
        .filter(|e| e["event"] == "db.session.permissions.update")
        .collect();
    let withheld = events
        .iter()
        .find(|e| e["db_service"] == format!("db-{n}-false").as_str())
        .expect("event of the first database");
    assert!(
        withheld["not_granted"][0]
            .as_str()
            .is_some_and(|t| t.starts_with("TRIGGER on TABLE public.orders")),
        "{withheld}"
    );
}
