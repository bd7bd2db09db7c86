//! Teleport files through the gateway: role options that restrict access and that dbward does
//! not enforce (or cannot read) never grant access silently, a role gaining
//! `require_session_mfa` ends sessions opened without a code, and a db resource's inline
//! `tls.ca_cert` is the CA the database is verified with. Real PostgreSQL, real psql, observed
//! by the client and in the catalogs.

mod common;

use common::*;

const GENERIC: &str =
    "access to db denied. User does not have permissions. Confirm database user and name.";

/// A db resource with its admin and a `reader` db role, and the text of a provisioning role
/// selecting it, with `options` added to its options.
struct World {
    db: String,
    reader: String,
    labels: String,
}

fn world() -> World {
    let h = harness();
    let n = unique("tr");
    let w = World {
        db: format!("db-{n}"),
        reader: format!("reader_{n}"),
        labels: format!("{{test: \"{n}\"}}"),
    };
    let admin = format!("adm_{n}");
    h.create_admin(&admin, &[&w.reader]);
    h.apply(&h.db_yaml(&w.db, &w.labels, Some(&admin)));
    w
}

impl World {
    fn role(&self, name: &str, options: &str) {
        harness().apply(&format!(
            "kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec:\n  options: {{create_db_user_mode: keep{options}}}\n  allow:\n    db_labels: {labels}\n    db_names: [\"*\"]\n    db_roles: [\"{reader}\"]\n",
            labels = self.labels,
            reader = self.reader,
        ));
    }

    fn user(&self, roles: &str) -> String {
        let user = unique("tu");
        harness().apply(&format!(
            "kind: user\nversion: v2\nmetadata: {{name: {user}}}\nspec: {{roles: [{roles}]}}\n"
        ));
        user
    }
}

#[test]
fn roles_with_unenforced_restrictions_refuse_the_connection_and_create_nothing() {
    let h = harness();
    let w = world();
    for (option, value) in [
        // `true` is enforced (tests/session_mfa.rs); hardware keys are not.
        ("require_session_mfa", "hardware_key_touch"),
        ("device_trust_mode", "required"),
        // Enforced options (tests/session_limits.rs) refuse when their value cannot be read.
        ("max_connections", "lots"),
        ("pin_source_ip", "sometimes"),
        ("client_idle_timeout", "30"),
    ] {
        let role = unique("restricted");
        w.role(&role, &format!(", {option}: {value}"));
        let user = w.user(&role);
        let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
        let r = h.psql(&files, &user, "postgres", "select 1");
        assert!(!r.ok, "{option}: connected");
        assert!(r.stderr.contains(GENERIC), "{option}: {}", r.stderr);
        assert_eq!(h.can_login(&user), None, "{option}: a user was created");
    }

    // The same role without the option connects (the refusal came from the option).
    let role = unique("plain");
    w.role(&role, "");
    let user = w.user(&role);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "1");
}

#[test]
fn a_role_gaining_require_session_mfa_ends_the_live_session() {
    let h = harness();
    let w = world();
    let role = unique("soon-mfa");
    w.role(&role, "");
    let user = w.user(&role);
    let files = h.db_cert(&user, route(&w.db, &user, "postgres", &[]));
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(conninfo(h.pg_addr, &files, &user, "postgres"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    let mut s = OpenSession::start(cmd).expect("session");
    assert_eq!(s.query("select 1").as_deref(), Some("1"));

    w.role(&role, ", require_session_mfa: true");
    h.eventually("locked after the role changed", || {
        h.can_login(&user) == Some(false)
    });
    assert_eq!(s.query("select 1"), None, "the session was closed");
    s.close();
}

/// Teleport's `spec.tls.ca_cert` (PEM text) is the CA the gateway verifies the database with.
#[test]
fn db_tls_ca_cert_pem_text_is_used_to_verify_the_database() {
    let h = harness();
    let w = world();
    let n = unique("ca");
    let admin = format!("adm_{n}");
    h.create_admin(&admin, &[&w.reader]);
    let pem_block = |pem: &str| -> String { pem.lines().map(|l| format!("      {l}\n")).collect() };
    let with_ca = |name: &str, pem: &str| {
        format!(
            "{}  tls:\n    mode: verify-ca\n    ca_cert: |\n{}",
            h.db_yaml(name, &w.labels, Some(&admin)),
            pem_block(pem)
        )
    };
    let role = unique("ca-role");
    w.role(&role, "");
    let user = w.user(&role);

    // The CA that signed the test server's certificate, given inline: connects.
    let good = format!("good-{n}");
    h.apply(&with_ca(&good, &h.gw.cas.db.cert_pem));
    let files = h.db_cert(&user, route(&good, &user, "postgres", &[]));
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(r.ok, "{}", r.stderr);

    // Another CA inline: the gateway refuses the database's certificate.
    let other = dbward_pki::CaSet::generate("elsewhere").expect("other CAs");
    let bad = format!("bad-{n}");
    h.apply(&with_ca(&bad, &other.db.cert_pem));
    let files = h.db_cert(&user, route(&bad, &user, "postgres", &[]));
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(!r.ok, "connected to a server the inline CA did not sign");
}
