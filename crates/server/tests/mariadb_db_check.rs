//! `dbward db check` and what a client reads on MariaDB when the admin's schema is missing:
//! the MariaDB guide creates the schema `teleport`, dbward's admin logs into `dbward` unless
//! the db resource names another (`admin_user.default_database`).

mod common;

use common::*;

/// The guide's self-hosted setup as written (schema `teleport`): a session is refused with a
/// message that names the missing schema, `db check` prints the statements that create it,
/// and after them (and the other printed fixes) `db check` passes and the session works. A
/// db resource that names `teleport` as the admin's schema works as set up.
#[test]
fn guide_setup_with_its_teleport_schema_is_reported_and_the_printed_fix_works() {
    let h = maria_harness();
    let n = unique("g");
    let (db, db_teleport, admin, role1, role) = (
        format!("my-{n}"),
        format!("myt-{n}"),
        format!("adm_{n}"),
        format!("role1_{n}"),
        format!("role-{n}"),
    );
    // The guide's statements for a self-hosted MariaDB, but for the names.
    h.maria_sql(&format!(
        "CREATE USER '{a}' REQUIRE SUBJECT '/CN={a}';
         GRANT PROCESS, CREATE USER ON *.* TO '{a}';
         GRANT SELECT ON mysql.roles_mapping TO '{a}';
         GRANT UPDATE ON mysql.* TO '{a}';
         GRANT SELECT ON *.* TO '{a}';
         CREATE DATABASE IF NOT EXISTS `teleport`;
         GRANT ALL ON `teleport`.* TO '{a}' WITH GRANT OPTION;
         CREATE ROLE `{r}` WITH ADMIN '{a}';",
        a = admin,
        r = role1
    ));
    let labels = format!("{{test: \"{n}\"}}");
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {labels}\n    db_roles: [\"{role1}\"]\n---\n{}\n---\nkind: db\nversion: v3\nmetadata: {{name: {db_teleport}, labels: {labels}}}\nspec:\n  protocol: mysql\n  uri: 127.0.0.1:{}\n  admin_user: {{name: {admin:?}, default_database: teleport}}\n",
        h.maria_db_yaml(&db, &labels, Some(&admin)),
        h.maria().port,
    ));
    let user = unique("u");
    let other = unique("v");
    for name in [&user, &other] {
        h.apply(&format!(
            "kind: user\nversion: v2\nmetadata: {{name: {name:?}}}\nspec: {{roles: [{role:?}]}}\n"
        ));
    }
    let files = h.db_cert(&user, route(&db, &user, "", &[]));

    // Refused, with the schema named and the command to run.
    let r = h.mariadb(&files, &user, "SELECT CURRENT_USER()");
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr
            .contains("schema \"dbward\" for automatic user provisioning does not exist"),
        "{r:?}"
    );
    assert!(r.stderr.contains(&format!("dbward db check {db}")), "{r:?}");
    assert!(!r.stderr.contains(&admin), "the admin is not named: {r:?}");

    let findings = h
        .block_on(dbward_server::session::preflight(&h.gw, &db, &[]))
        .unwrap();
    let schema = findings
        .iter()
        .find(|f| f.problem.contains("\"dbward\""))
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(
        schema.fix,
        format!(
            "CREATE DATABASE IF NOT EXISTS `dbward`; GRANT ALL ON `dbward`.* TO `{admin}`@`%`;"
        )
    );
    assert!(schema.problem.contains("does not exist"), "{schema:?}");
    assert!(
        schema.problem.contains("spec.admin_user.default_database"),
        "{schema:?}"
    );

    // The db resource that names the guide's schema needs no schema.
    let teleport = h
        .block_on(dbward_server::session::preflight(&h.gw, &db_teleport, &[]))
        .unwrap();
    assert!(
        !teleport.iter().any(|f| f.problem.contains("schema")),
        "{teleport:?}"
    );
    let other_files = h.db_cert(&other, route(&db_teleport, &other, "", &[]));
    let r = h.mariadb(&other_files, &other, "SELECT CURRENT_USER()");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, format!("{other}@%"));

    // Every printed fix applied: nothing more to report, and the session works.
    for finding in &findings {
        h.maria_sql(&finding.fix);
    }
    h.gw.upstream.forget_db(&db);
    let after = h
        .block_on(dbward_server::session::preflight(&h.gw, &db, &[]))
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
    let r = h.mariadb(&files, &user, "SELECT CURRENT_USER()");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, format!("{user}@%"));
}
