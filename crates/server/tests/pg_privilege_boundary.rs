//! The PostgreSQL privilege boundary (PROVISIONING.md §8) attacked the way a provisioned user
//! would: with psql through the gateway, over several sessions, each result observed in the
//! server's catalogs by the test's superuser.

mod common;

use common::*;

/// One test's world: its own database (the admin's default database, where the user
/// connects), an admin with CREATEROLE holding `reader` WITH ADMIN OPTION, a db resource and a
/// dbward role that provisions in keep mode with `db_roles`.
struct World {
    db: String,
    database: String,
    admin: String,
    reader: String,
    role: String,
}

fn world(db_roles: &str) -> World {
    let h = harness();
    let n = unique("b");
    let w = World {
        db: format!("db-{n}"),
        database: format!("data_{n}"),
        admin: format!("adm_{n}"),
        reader: format!("reader_{n}"),
        role: format!("role-{n}"),
    };
    h.create_admin(&w.admin, &[&w.reader]);
    h.sql(&format!("CREATE DATABASE {}", q(&w.database)));
    let db_roles = db_roles.replace("READER", &w.reader);
    h.apply(&format!(
        r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: keep}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
    db_roles: {db_roles}
---
kind: db
version: v3
metadata: {{name: {db}, labels: {{test: "{n}"}}}}
spec:
  protocol: postgres
  uri: 127.0.0.1:{port}
  admin_user: {{name: {admin:?}, default_database: {database:?}}}
"#,
        role = w.role,
        db = w.db,
        port = h.pg().port,
        admin = w.admin,
        database = w.database,
    ));
    w
}

/// A dbward user with `roles` and the trait `db_roles`.
fn add_user(name: &str, role: &str, db_roles_trait: &[&str]) {
    let traits = db_roles_trait
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    harness().apply(&format!(
        "kind: user\nversion: v2\nmetadata: {{name: {name:?}}}\n\
         spec: {{roles: [{role:?}], traits: {{db_roles: [{traits}]}}}}\n"
    ));
}

/// SQL as the superuser in `database`.
fn sql_in(database: &str, sql: &str) -> String {
    harness()
        .pg()
        .psql_super_in(database, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:#}"))
}

/// Runs `sql` as `user` through the gateway and waits for the teardown that follows.
fn session(files: &ClientFiles, user: &str, database: &str, sql: &str) -> PsqlResult {
    let h = harness();
    let r = h.psql(files, user, database, sql);
    assert!(r.ok, "{user} runs {sql}: {r:?}");
    torn_down(user);
    r
}

/// Waits for both steps of teardown: login disabled, then (one transaction) the roles
/// revoked and the role put back to a clean slate.
fn torn_down(user: &str) {
    let h = harness();
    h.eventually("teardown after the session", || {
        h.can_login(user) == Some(false) && h.memberships(user) == "dbward-auto-user"
    });
}

/// `user`'s attributes in `pg_authid`:
/// `login|super|createdb|createrole|replication|bypassrls|inherit|connlimit|password|validuntil`,
/// the password and expiry reduced to `none` / `set`.
fn attributes(user: &str) -> String {
    harness().sql(&format!(
        "SELECT concat_ws('|', rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, \
         rolbypassrls, rolinherit, rolconnlimit, \
         CASE WHEN rolpassword IS NULL THEN 'none' ELSE 'set' END, \
         CASE WHEN rolvaliduntil IS NULL OR rolvaliduntil = 'infinity' THEN 'none' ELSE 'set' END) \
         FROM pg_authid WHERE rolname = {}",
        lit(user)
    ))
}

/// A clean slate, logging in or locked.
fn clean(login: bool) -> String {
    format!("{}|f|f|f|f|f|t|-1|none|none", if login { "t" } else { "f" })
}

/// How many per-role and per-database settings `user` has (`pg_db_role_setting`).
fn settings(user: &str) -> String {
    harness().sql(&format!(
        "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles u ON u.oid = s.setrole \
         WHERE u.rolname = {}",
        lit(user)
    ))
}

/// The direct members of `role`, sorted, comma separated.
fn members_of(role: &str) -> String {
    harness().sql(&format!(
        "SELECT coalesce(string_agg(u.rolname, ',' ORDER BY u.rolname), '') \
         FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
         JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = {}",
        lit(role)
    ))
}

/// The helpers the admin connection installs (pg_temp.dbward_*), with argument and result
/// types: the user plants functions of the same names and arguments in `public`.
const HELPERS: &[(&str, &str, &str)] = &[
    ("dbward_exists", "text", "boolean"),
    ("dbward_is_managed", "text, text", "boolean"),
    ("dbward_held_roles", "text, text", "text[]"),
    ("dbward_live_sessions", "text", "bigint"),
    ("dbward_require_createrole", "", "void"),
    ("dbward_check_requested", "text[], text, text[]", "void"),
    (
        "dbward_forbidden_roles",
        "text[], text, text[]",
        "SETOF text",
    ),
    ("dbward_grant", "text, text[]", "void"),
    ("dbward_revoke_one", "text, text, text", "void"),
    ("dbward_clean_slate", "text, text, boolean", "void"),
    ("dbward_ensure_marker", "text", "void"),
    ("dbward_activate", "text, text[], text", "text"),
    ("dbward_activate", "text, text[], text, text[]", "text"),
    ("dbward_disable_login", "text, text", "text"),
    ("dbward_finish_teardown", "text, text, boolean", "text"),
];

/// What `attacker` plants in `public`: every object logs its call (with the role that ran it)
/// into `public.hijack_log` and tries to make `attacker` CREATEROLE and SUPERUSER, then behaves
/// like the built-in it shadows so that the caller carries on unaware.
fn planted_objects(attacker: &str) -> String {
    let mut sql = format!(
        r#"
        CREATE TABLE public.hijack_log (called text, caller text DEFAULT current_user);
        GRANT INSERT ON public.hijack_log TO PUBLIC;
        CREATE FUNCTION public.dw_escalate(what text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO public.hijack_log (called) VALUES (what);
          BEGIN
            EXECUTE pg_catalog.format('ALTER ROLE %I CREATEROLE', {attacker});
          EXCEPTION WHEN OTHERS THEN NULL;
          END;
        END $$;
        CREATE FUNCTION public.format(f text, a text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('format/2'); RETURN pg_catalog.format(f, a); END $$;
        CREATE FUNCTION public.format(f text, a text, b text) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('format/3'); RETURN pg_catalog.format(f, a, b); END $$;
        CREATE FUNCTION public.dw_agg_step(acc text[], v text) RETURNS text[] LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('array_agg'); RETURN pg_catalog.array_append(acc, v); END $$;
        CREATE AGGREGATE public.array_agg(text) (SFUNC = public.dw_agg_step, STYPE = text[]);
        CREATE FUNCTION public.dw_contains(a text[], b text[]) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN PERFORM public.dw_escalate('@>'); RETURN a OPERATOR(pg_catalog.@>) b; END $$;
        CREATE OPERATOR public.@> (LEFTARG = text[], RIGHTARG = text[], FUNCTION = public.dw_contains);
        "#,
        attacker = lit(attacker),
    );
    for (name, args, result) in HELPERS {
        let body = match *result {
            "void" | "SETOF text" => "RETURN;",
            "boolean" => "RETURN false;",
            "bigint" => "RETURN 0;",
            "text[]" => "RETURN '{}';",
            _ => "RETURN 'created';",
        };
        sql.push_str(&format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {result} LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM public.dw_escalate('{name}'); {body} END $$;\n"
        ));
    }
    sql
}

#[test]
fn objects_planted_in_public_through_the_gateway_are_never_called_by_the_admin() {
    let h = harness();
    let w = world(r#"["READER"]"#);
    let user = unique("mallory");
    add_user(&user, &w.role, &[]);
    let files = h.db_cert(&user, route(&w.db, &user, &w.database, &[]));

    // The first session creates the user; then it may create objects in public, as everyone
    // could before PostgreSQL 15.
    session(&files, &user, &w.database, "select 1");
    sql_in(
        &w.database,
        &format!("GRANT CREATE ON SCHEMA public TO {}", q(&user)),
    );

    // Plant, disconnect (teardown), reconnect (reactivation), disconnect again.
    let r = session(&files, &user, &w.database, &planted_objects(&user));
    assert!(r.stderr.is_empty(), "{r:?}");
    assert_eq!(
        sql_in(
            &w.database,
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace \
             AND proname IN ('format', 'array_agg', 'dbward_activate', 'dbward_grant')"
        ),
        "6",
        "the planted objects exist"
    );
    let r = session(&files, &user, &w.database, "select current_user");
    assert_eq!(r.stdout, user);
    assert_eq!(h.memberships(&user), "dbward-auto-user");

    let calls = sql_in(
        &w.database,
        "SELECT coalesce(string_agg(called || ' as ' || caller, ', '), '') FROM public.hijack_log",
    );
    assert_eq!(calls, "", "planted objects were called");
    assert_eq!(attributes(&user), clean(false));
}

#[test]
fn a_password_and_settings_a_user_gives_itself_do_not_outlive_its_session() {
    let h = harness();
    let w = world(r#"["READER"]"#);
    let user = unique("tamper");
    add_user(&user, &w.role, &[]);
    let files = h.db_cert(&user, route(&w.db, &user, &w.database, &[]));
    let tamper = format!(
        "ALTER ROLE CURRENT_USER PASSWORD 'chosen by the user'; \
         ALTER ROLE CURRENT_USER SET search_path = evil, public; \
         ALTER ROLE CURRENT_USER SET statement_timeout = '1s'; \
         ALTER ROLE CURRENT_USER IN DATABASE {} SET work_mem = '64MB';",
        q(&w.database)
    );

    // During the session the changes are there (checked from the user's own view).
    let r = h.psql(
        &files,
        &user,
        &w.database,
        &format!(
            "{tamper} SELECT count(*) FROM pg_db_role_setting WHERE setrole = \
             (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ),
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout.lines().last(), Some("2"), "{r:?}");
    torn_down(&user);
    assert_eq!(attributes(&user), clean(false), "after teardown");
    assert_eq!(settings(&user), "0", "after teardown");

    // The next session starts clean: no password, no settings applied to it.
    let mut s = OpenSession::start({
        let mut cmd = std::process::Command::new("psql");
        cmd.arg(conninfo(h.pg_addr, &files, &user, &w.database))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
        cmd
    })
    .expect("the next session starts");
    assert_eq!(attributes(&user), clean(true), "during the next session");
    assert_eq!(settings(&user), "0", "during the next session");
    assert_eq!(s.query("show statement_timeout").as_deref(), Some("0"));
    assert_eq!(s.query("show work_mem").as_deref(), Some("4MB"));
    // It tampers again; a crash-free teardown removes it again.
    assert_eq!(
        s.query(&format!(
            "{tamper} SELECT count(*) FROM pg_db_role_setting WHERE setrole = \
             (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ))
        .as_deref(),
        Some("2")
    );
    s.close();
    torn_down(&user);
    assert_eq!(attributes(&user), clean(false), "after the next teardown");
    assert_eq!(settings(&user), "0", "after the next teardown");
}

#[test]
fn a_trait_naming_the_admin_or_a_dangerous_predefined_role_is_refused_and_grants_nothing() {
    let h = harness();
    let w = world(r#"["{{internal.db_roles}}"]"#);
    // The trait is what grants: naming an ordinary role connects with it.
    let control = unique("plain");
    add_user(&control, &w.role, &[&w.reader]);
    let files = h.db_cert(&control, route(&w.db, &control, &w.database, &[]));
    let r = session(
        &files,
        &control,
        &w.database,
        &format!(
            "select current_user || ' ' || pg_has_role(current_user, {}, 'MEMBER')",
            lit(&w.reader)
        ),
    );
    assert_eq!(r.stdout, format!("{control} true"));

    for requested in [w.admin.as_str(), "pg_execute_server_program"] {
        let before = members_of(requested);
        let user = unique("climber");
        add_user(&user, &w.role, &[requested]);
        let files = h.db_cert(&user, route(&w.db, &user, &w.database, &[]));
        let r = h.psql(&files, &user, &w.database, "select current_user");
        assert!(!r.ok, "{requested}: connected: {r:?}");
        assert_ne!(r.stdout, user, "{requested}");
        assert_eq!(h.memberships(&user), "", "{requested}");
        assert_eq!(h.can_login(&user), None, "{requested}: a user was created");
        assert_eq!(members_of(requested), before, "{requested}");
    }
}
