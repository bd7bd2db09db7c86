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
        .block_on(dbward_server::session::preflight(&h.gw, &db, &[]))
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
            .block_on(dbward_server::session::preflight(&h.gw, &db, &[]))
            .unwrap();
        assert!(findings.is_empty(), "after the fix: {findings:?}");
    }
    let r = h.psql(&files, &user, "postgres", "select current_user");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, user);
}

/// One troubleshooting case: a database `database` of its own on the test server, an admin
/// set up as the guide has it (plus the marker role on PostgreSQL 16+), a `db` resource
/// whose admin has no `default_database` (so the admin enters each session's database, as
/// Teleport's does), and a user whose role reaches `database` by name with `db_roles`.
struct Case {
    db: String,
    database: String,
    admin: String,
    user: String,
    files: ClientFiles,
}

fn case(prefix: &str, db_roles: &[&str], admin_roles: &[&str], db_names: &str) -> Case {
    let h = harness();
    let n = unique(prefix);
    let (db, database, admin, role, user) = (
        format!("db-{n}"),
        format!("d_{n}"),
        format!("adm_{n}"),
        format!("role-{n}"),
        unique("t"),
    );
    h.create_admin(&admin, admin_roles);
    h.sql(&format!("CREATE DATABASE {}", q(&database)));
    let db_names = db_names.replace("DATABASE", &database);
    let roles = db_roles
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: keep}}\n  allow:\n    db_labels: {{test: \"{n}\"}}\n    db_names: {db_names}\n    db_roles: [{roles}]\n---\nkind: db\nversion: v3\nmetadata: {{name: {db}, labels: {{test: \"{n}\"}}}}\nspec:\n  protocol: postgres\n  uri: 127.0.0.1:{port}\n  admin_user: {{name: {admin:?}}}\n---\nkind: user\nversion: v2\nmetadata: {{name: {user:?}}}\nspec: {{roles: [{role:?}]}}\n",
        port = h.pg().port,
    ));
    let files = h.db_cert(&user, route(&db, &user, &database, &[]));
    Case {
        db,
        database,
        admin,
        user,
        files,
    }
}

impl Case {
    /// `dbward db check DB [--db-name ...]`.
    fn check(&self, db_names: &[&str]) -> Vec<dbward_server::api::DbCheckFinding> {
        let h = harness();
        let names: Vec<String> = db_names.iter().map(|s| s.to_string()).collect();
        h.block_on(dbward_server::session::preflight(&h.gw, &self.db, &names))
            .unwrap()
    }

    fn fixes(&self, db_names: &[&str]) -> Vec<String> {
        let mut fixes: Vec<String> = self.check(db_names).into_iter().map(|f| f.fix).collect();
        fixes.sort();
        fixes
    }

    /// psql through the gateway into the case's database.
    fn connect(&self) -> PsqlResult {
        harness().psql(
            &self.files,
            &self.user,
            &self.database,
            "select current_user",
        )
    }

    fn assert_connects(&self) {
        let r = self.connect();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.stdout, self.user);
    }
}

fn sorted(fixes: &[String]) -> Vec<String> {
    let mut fixes = fixes.to_vec();
    fixes.sort();
    fixes
}

/// Guide entry "User does not have CONNECT privilege": neither the admin nor the role may
/// connect to the database. psql shows the server's own FATAL and DETAIL (first for the
/// admin's login, then, with the admin fixed, for the user's), `db check` prints both
/// GRANT CONNECT statements, and after them the session works.
#[test]
fn connect_privilege_missing_shows_the_servers_error_and_db_check_prints_both_grants() {
    let h = harness();
    let reader = unique("reader_");
    let c = case("cn", &[&reader], &[&reader], "[\"DATABASE\"]");
    h.sql(&format!(
        "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
        q(&c.database)
    ));
    let denied = format!("permission denied for database \"{}\"", c.database);
    let detail = "DETAIL:  User does not have CONNECT privilege.";

    let r = c.connect();
    assert!(!r.ok, "{r:?}");
    assert!(r.stderr.contains(&format!("FATAL:  {denied}")), "{r:?}");
    assert!(r.stderr.contains(detail), "{r:?}");

    let admin_fix = format!(
        "GRANT CONNECT ON DATABASE {} TO {};",
        q(&c.database),
        q(&c.admin)
    );
    let role_fix = format!(
        "GRANT CONNECT ON DATABASE {} TO {};",
        q(&c.database),
        q(&reader)
    );
    assert_eq!(c.fixes(&[]), sorted(&[admin_fix.clone(), role_fix.clone()]));

    // The admin fixed: the user is created, and its own login is refused the same way.
    h.sql(&admin_fix);
    let r = c.connect();
    assert!(!r.ok, "{r:?}");
    assert!(r.stderr.contains(&format!("FATAL:  {denied}")), "{r:?}");
    assert!(r.stderr.contains(detail), "{r:?}");
    assert_eq!(c.fixes(&[]), vec![role_fix.clone()]);

    h.sql(&role_fix);
    assert_eq!(c.fixes(&[]), Vec::<String>::new());
    c.assert_connects();
}

/// A role that allows every database name (`"*"`): `db check` cannot know the databases,
/// and checks the ones `--db-name` names.
#[test]
fn db_check_looks_at_databases_named_with_db_name() {
    let h = harness();
    let reader = unique("reader_");
    let c = case("wn", &[&reader], &[&reader], "[\"*\"]");
    h.sql(&format!(
        "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
        q(&c.database)
    ));
    assert_eq!(c.fixes(&[]), Vec::<String>::new());
    let fixes = c.fixes(&[&c.database]);
    // The same through the API `dbward db check --db-name` calls.
    let (status, body) = api_db_check(&c.db, &c.database);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let response: dbward_server::api::DbCheckResponse = serde_json::from_str(&body).unwrap();
    let mut api_fixes: Vec<String> = response.findings.into_iter().map(|f| f.fix).collect();
    api_fixes.sort();
    assert_eq!(api_fixes, fixes);
    assert_eq!(
        fixes,
        sorted(&[
            format!(
                "GRANT CONNECT ON DATABASE {} TO {};",
                q(&c.database),
                q(&c.admin)
            ),
            format!(
                "GRANT CONNECT ON DATABASE {} TO {};",
                q(&c.database),
                q(&reader)
            ),
        ])
    );
    for fix in &fixes {
        h.sql(fix);
    }
    assert_eq!(c.fixes(&[&c.database]), Vec::<String>::new());
    c.assert_connects();
}

/// Guide entries "Permission denied for schema public" and "No schema has been selected":
/// dbward's admin creates nothing in schema public (its functions live in pg_temp), so a
/// database where nobody but its owner may use or create in public (PostgreSQL 15's
/// default and less) needs nothing. What dbward needs instead is TEMPORARY on the database;
/// without it the client is told so and `db check` prints the GRANT.
#[test]
fn schema_public_is_not_needed_and_a_missing_temporary_privilege_is_reported() {
    let h = harness();
    let reader = unique("reader_");
    let c = case("sp", &[&reader], &[&reader], "[\"DATABASE\"]");
    h.pg()
        .psql_super_in(&c.database, "REVOKE ALL ON SCHEMA public FROM PUBLIC")
        .unwrap();
    h.sql(&format!(
        "REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC",
        q(&c.database)
    ));

    let r = c.connect();
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "permission denied to create temporary tables in database \"{}\"",
            c.database
        )),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!("dbward db check {}", c.db)),
        "{r:?}"
    );
    assert!(
        !r.stderr.contains(&c.admin),
        "the admin is not named: {r:?}"
    );
    let fix = format!(
        "GRANT TEMPORARY ON DATABASE {} TO {};",
        q(&c.database),
        q(&c.admin)
    );
    assert_eq!(c.fixes(&[]), vec![fix.clone()]);
    h.sql(&fix);
    assert_eq!(c.fixes(&[]), Vec::<String>::new());
    c.assert_connects();
}

/// Guide entry "Cannot execute in a read-only transaction" (SQLSTATE 25006): transactions in
/// the session's database are read-only. The client is told the database is read-only,
/// `db check` names the database and prints the fix.
#[test]
fn read_only_database_is_reported_with_its_fix() {
    let h = harness();
    let reader = unique("reader_");
    let c = case("ro", &[&reader], &[&reader], "[\"DATABASE\"]");
    h.sql(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        q(&c.database)
    ));
    let r = c.connect();
    assert!(!r.ok, "{r:?}");
    assert!(r.stderr.contains("the database is read-only"), "{r:?}");
    let findings = c.check(&[]);
    let fix = format!(
        "ALTER ROLE {} SET default_transaction_read_only = off;",
        q(&c.admin)
    );
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].fix, fix);
    assert!(
        findings[0].problem.contains(&format!("\"{}\"", c.database)),
        "{findings:?}"
    );
    h.sql(&fix);
    assert_eq!(c.fixes(&[]), Vec::<String>::new());
    c.assert_connects();
}

/// Guide entry "Permission denied to grant role": the admin does not hold a db role WITH
/// ADMIN OPTION. The client reads `permission denied to grant role "x"`, `db check` prints
/// `GRANT x TO admin WITH ADMIN OPTION`, and after it the session works.
#[test]
fn role_the_admin_cannot_grant_is_reported_with_its_fix() {
    let h = harness();
    let granted = unique("iam_");
    h.sql(&format!("CREATE ROLE {}", q(&granted)));
    let c = case("gr", &[&granted], &[], "[\"DATABASE\"]");
    let r = c.connect();
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("permission denied to grant role \"{granted}\"")),
        "{r:?}"
    );
    let fix = format!(
        "GRANT {} TO {} WITH ADMIN OPTION;",
        q(&granted),
        q(&c.admin)
    );
    assert_eq!(c.fixes(&[]), vec![fix.clone()]);
    h.sql(&fix);
    assert_eq!(c.fixes(&[]), Vec::<String>::new());
    c.assert_connects();
}

/// `GET /v1/dbs/DB/check?db_names=NAME` with the admin identity the gateway wrote to its
/// data directory, as `dbward db check DB --db-name NAME` sends it: (status line, body).
fn api_db_check(db: &str, db_name: &str) -> (String, String) {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    let files = dbward_server::bootstrap::AdminFiles::new(&h.dir.join("data"));
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let (cert, key, host_ca) = (read(files.cert()), read(files.key()), read(files.host_ca()));
    let web = h.block_on(async { h.gw.endpoints.read().await.web.clone() });
    let request = format!(
        "GET /v1/dbs/{db}/check?db_names={db_name} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    );
    let text = h.block_on(async {
        let config = dbward_pki::client_config(
            Some(&host_ca),
            dbward_pki::ServerVerification::Full,
            Some((&cert, &key)),
        )
        .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        let tcp = tokio::net::TcpStream::connect(&web).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tls.read_to_end(&mut buf),
        )
        .await;
        String::from_utf8_lossy(&buf).to_string()
    });
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}
