//! `dbward db check` against PostgreSQL: what an admin set up for PostgreSQL 15 and older
//! lacks on 16+ (the marker role WITH ADMIN OPTION) is found and the printed fix works; on
//! older majors nothing is reported and nothing is needed. Run on each major with
//! `DBWARD_PG_MAJOR` (scripts/test does).

mod common;

use common::*;

#[test]
fn db_check_prints_the_fix_the_servers_major_needs_and_the_fix_works() {
    let h = harness();
    let n = unique("c");
    let (db, admin, reader, role, user) = (
        format!("db-{n}"),
        format!("adm_{n}"),
        format!("reader_{n}"),
        format!("role-{n}"),
        unique("checked"),
    );
    // The admin exactly as the guide has it for PostgreSQL 13-15, after the marker role was
    // created by someone else (another admin, or a previous installation).
    h.sql(&format!(
        "DO $$BEGIN CREATE ROLE \"dbward-auto-user\"; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$; \
         CREATE ROLE {a} LOGIN CREATEROLE; CREATE ROLE {r}; GRANT {r} TO {a} WITH ADMIN OPTION;",
        a = q(&admin),
        r = q(&reader)
    ));
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{test: \"{n}\"}}\n    db_names: [\"*\"]\n    db_roles: [{reader:?}]\n---\n{}\n---\nkind: user\nversion: v2\nmetadata: {{name: {user:?}}}\nspec: {{roles: [{role:?}]}}\n",
        h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    let files = h.db_cert(&user, route(&db, &user, "postgres", &[]));
    let findings = h
        .block_on(dbward_server::session::preflight(&h.gw, &db))
        .unwrap();
    let fix = format!(
        "GRANT \"dbward-auto-user\" TO {} WITH ADMIN OPTION;",
        q(&admin)
    );

    if h.pg().major_version() < 16 {
        assert!(findings.is_empty(), "{findings:?}");
    } else {
        let fixes: Vec<&str> = findings.iter().map(|f| f.fix.as_str()).collect();
        assert_eq!(fixes, vec![fix.as_str()], "{findings:?}");
        let r = h.psql(&files, &user, "postgres", "select current_user");
        assert!(!r.ok, "connected without the fix: {r:?}");
        assert_eq!(h.can_login(&user), None, "nothing left behind");
        h.sql(&fix);
        h.gw.upstream.forget_db(&db);
        let findings = h
            .block_on(dbward_server::session::preflight(&h.gw, &db))
            .unwrap();
        assert!(findings.is_empty(), "after the fix: {findings:?}");
    }
    let r = h.psql(&files, &user, "postgres", "select current_user");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, user);
}
