//! The connection to PostgreSQL is opened while the user is activated. A server that closes
//! it before the activation is over (its `authentication_timeout`) must not cost the session:
//! the gateway opens another. In a file of its own, since the setting is server-wide and would
//! shorten every other test's logins.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_session_whose_activation_outlasts_the_servers_login_timeout_still_starts() {
    let h = harness();
    let n = unique("t");
    let (db, admin, role, user) = (
        format!("db-{n}"),
        format!("adm_{n}"),
        format!("role-{n}"),
        unique("erin"),
    );
    h.create_admin(&admin, &[]);
    h.apply(&format!(
        r#"kind: role
version: v7
metadata: {{name: {role}}}
spec:
  options: {{create_db_user_mode: keep}}
  allow:
    db_labels: {{test: "{n}"}}
    db_names: ["*"]
---
kind: user
version: v2
metadata: {{name: {user}}}
spec: {{roles: [{role}]}}
---
{db}
"#,
        db = h.db_yaml(&db, &format!("{{test: \"{n}\"}}"), Some(&admin)),
    ));
    let files = h.db_cert(&user, route(&db, &user, "postgres", &[]));
    // A first session creates the user; it is locked after.
    let first = h.psql(&files, &user, "postgres", "select current_user");
    assert!(first.ok, "{first:?}");
    h.eventually("user locked after the first session", || {
        h.can_login(&user) == Some(false)
    });

    h.sql("ALTER SYSTEM SET authentication_timeout = '1s'");
    h.sql("SELECT pg_reload_conf()");
    h.eventually("authentication_timeout is 1s", || {
        h.sql("SHOW authentication_timeout") == "1s"
    });

    // Another transaction holds the user's row in pg_authid for 3 s: the reactivation
    // (ALTER ROLE … LOGIN) waits for it, well past the 1 s the server gives a connection
    // to log in.
    let holder = {
        let user = user.clone();
        std::thread::spawn(move || {
            harness().sql(&format!(
                "BEGIN; ALTER ROLE {} CONNECTION LIMIT -1; SELECT pg_sleep(3); COMMIT;",
                q(&user)
            ))
        })
    };
    h.eventually("the row lock is held", || {
        h.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND state = 'active' AND pid <> pg_backend_pid()") == "1"
    });
    let started = Instant::now();
    let second = h.psql(&files, &user, "postgres", "select current_user");
    let took = started.elapsed();
    holder.join().expect("lock holder");
    h.sql("ALTER SYSTEM RESET authentication_timeout");
    h.sql("SELECT pg_reload_conf()");

    assert!(second.ok, "{second:?}");
    assert_eq!(second.stdout, user);
    // The scenario took place: the activation waited past the server's timeout.
    assert!(
        took > Duration::from_millis(1500),
        "the session started after {took:?}, before the lock was released"
    );
}
