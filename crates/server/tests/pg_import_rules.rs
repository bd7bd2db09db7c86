//! `db_object_import_rule` resources label tables, and `db_permissions` grant on those
//! labels (PROVISIONING.md §6), through the PostgreSQL gateway. A test binary of its own: once
//! an import rule exists, the default rule no longer applies to any database of the store.

mod common;

use common::*;

#[test]
fn an_import_rule_labels_tables_by_schema_and_name_and_a_role_grants_on_the_label() {
    let h = harness();
    let n = unique("i");
    let (db, admin, database) = (format!("db-{n}"), format!("adm_{n}"), format!("shop_{n}"));
    h.create_admin(&admin, &[]);
    h.sql(&format!("CREATE DATABASE {}", q(&database)));
    h.pg()
        .psql_super_in(
            &database,
            &format!(
                "CREATE TABLE public.orders (id int);
                 CREATE SCHEMA sales;
                 CREATE TABLE sales.invoices (id int); INSERT INTO sales.invoices VALUES (7);
                 CREATE TABLE sales.invoices_archive (id int);
                 CREATE TABLE sales.targets (id int);
                 GRANT ALL ON ALL TABLES IN SCHEMA public, sales TO {a} WITH GRANT OPTION;
                 GRANT USAGE ON SCHEMA sales TO {a} WITH GRANT OPTION;",
                a = q(&admin)
            ),
        )
        .unwrap();
    let role = format!("finance-{n}");
    h.apply(&format!(
        r#"kind: db_object_import_rule
version: v1
metadata: {{name: finance-{n}}}
spec:
  priority: 10
  database_labels: {{test: "{n}"}}
  mappings:
  - scope: {{schema_names: [sales]}}
    match: {{table_names: ["invoices*"]}}
    add_labels:
      department: finance
      object: "{{{{obj.name}}}}"
---
kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: keep}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_permissions:
    - match: {{department: finance}}
      permissions: [SELECT]
    - match: {{object: invoices}}
      permissions: [UPDATE]
---
{db}
"#,
        db = h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    let user = unique("fin");
    h.apply(&format!(
        "kind: user\nversion: v2\nmetadata: {{name: {user:?}}}\nspec: {{roles: [{role:?}]}}\n"
    ));
    let files = h.db_cert(&user, route(&db, &user, &database, &[]));

    let read = h.psql(&files, &user, &database, "SELECT id FROM sales.invoices");
    assert!(read.ok, "{read:?}");
    assert_eq!(read.stdout, "7");
    let update = h.psql(
        &files,
        &user,
        &database,
        "UPDATE sales.invoices SET id = 8 WHERE false",
    );
    assert!(update.ok, "{update:?}");
    // Not labelled by the rule: no privilege at all.
    for table in ["sales.targets", "public.orders"] {
        let r = h.psql(&files, &user, &database, &format!("SELECT * FROM {table}"));
        assert!(!r.ok, "{table}: {r:?}");
        assert!(r.stderr.contains("permission denied"), "{table}: {r:?}");
    }
    let r = h.psql(
        &files,
        &user,
        &database,
        "UPDATE sales.invoices_archive SET id = 1 WHERE false",
    );
    assert!(!r.ok, "{r:?}");

    let update = h
        .audit_events(&user)
        .into_iter()
        .find(|e| e["event"] == "db.session.permissions.update")
        .expect("permissions event");
    assert_eq!(update["affected_object_counts"]["table"], 2, "{update}");
    assert_eq!(
        update["permission_summary"],
        serde_json::json!([
            {"permission": "SELECT", "counts": {"table": 2}},
            {"permission": "UPDATE", "counts": {"table": 1}}
        ]),
        "{update}"
    );
    h.eventually("privileges revoked after the session", || {
        h.pg()
            .psql_super_in(
                &database,
                &format!(
                    "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a \
                     JOIN pg_roles r ON r.oid = a.grantee WHERE r.rolname = {}",
                    lit(&user)
                ),
            )
            .unwrap()
            == "0"
    });
}
