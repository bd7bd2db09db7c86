//! Behaviour of the access decision, one table per rule of PROVISIONING.md §1 and §6.
//! Each case carries its roles as YAML so the reader sees exactly what is being decided.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dbward_model::{AdminUser, Db, DbObjectImportRule, Permission, Protocol, Role, User};
use proptest::prelude::*;

use crate::*;

// ---------------------------------------------------------------------------------------
// Fixtures

/// Parses a multi-document YAML string of roles.
fn roles(yaml: &str) -> Vec<Role> {
    documents(yaml)
        .map(|doc| {
            serde_yaml_ng::from_str(doc).unwrap_or_else(|e| panic!("bad role YAML: {e}\n{doc}"))
        })
        .collect()
}

/// The documents of a multi-document YAML string.
fn documents(yaml: &str) -> impl Iterator<Item = &str> {
    yaml.split("\n---\n").filter(|d| !d.trim().is_empty())
}

fn alice() -> User {
    let mut user = User::new("alice", &[] as &[&str]);
    let traits = [
        ("db_users", vec!["app"]),
        ("db_names", vec!["appdb"]),
        ("db_roles", vec!["writer"]),
        ("email", vec!["alice.smith@example.com"]),
        ("groups", vec!["db-auditor", "staff", "db-analyst"]),
        ("env", vec!["dev"]),
    ];
    for (k, vs) in traits {
        user.spec
            .traits
            .insert(k.into(), vs.into_iter().map(String::from).collect());
    }
    user
}

fn checker(yaml: &str) -> AccessChecker {
    AccessChecker::new(&alice(), &roles(yaml)).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn db(protocol: Protocol, labels: &[(&str, &str)]) -> Db {
    let mut db = Db::new("example", protocol, "localhost:1");
    for (k, v) in labels {
        db.metadata.labels.insert(k.to_string(), v.to_string());
    }
    db.spec.admin_user = Some(AdminUser {
        name: "dbward-admin".into(),
        default_database: None,
    });
    db
}

fn pg(labels: &[(&str, &str)]) -> Db {
    db(Protocol::Postgres, labels)
}

fn my(labels: &[(&str, &str)]) -> Db {
    db(Protocol::Mysql, labels)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What a case expects from `authorize`.
#[derive(Debug)]
enum Expect {
    /// Allowed, with this mode, db name and db roles.
    Allowed {
        mode: ProvisioningMode,
        db_name: &'static str,
        roles: &'static [&'static str],
    },
    /// Refused with the generic text.
    Denied,
    /// Refused with this exact user message.
    Message(&'static str),
}

use Expect::*;
use ProvisioningMode::{BestEffortDrop, Keep, Off};

struct Case {
    name: &'static str,
    roles: &'static str,
    db: Db,
    db_user: &'static str,
    db_name: &'static str,
    requested: &'static [&'static str],
    expect: Expect,
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let checker = checker(case.roles);
        let got = checker.authorize(
            &case.db,
            case.db_user,
            case.db_name,
            &strings(case.requested),
        );
        let ctx = format!("case \"{}\"\n{}", case.name, case.roles);
        match (&case.expect, got) {
            (
                Allowed {
                    mode,
                    db_name,
                    roles,
                },
                Ok(d),
            ) => {
                assert_eq!(d.mode, *mode, "{ctx}");
                assert_eq!(d.db_name, *db_name, "{ctx}");
                assert_eq!(d.db_user, case.db_user, "{ctx}");
                assert_eq!(d.db_roles, strings(roles), "{ctx}");
            }
            (Denied, Err(e)) => {
                assert_eq!(e.user_message(), GENERIC_DENIAL, "{ctx}");
                assert!(!e.reason().is_empty(), "{ctx}");
            }
            (Message(m), Err(e)) => assert_eq!(e.user_message(), *m, "{ctx}"),
            (expect, got) => panic!("{ctx}\nexpected {expect:?}, got {got:?}"),
        }
    }
}

const ALLOW_APP_DEV: &str = "
kind: role
metadata: {name: dev-app}
spec:
  allow:
    db_labels: {env: dev}
    db_users: [app]
    db_names: ['*']
";

// ---------------------------------------------------------------------------------------
// Allow and deny (items 6 and the `db_users` / `db_names` check)

#[test]
fn deny_rules_win_over_allow() {
    run(vec![
        Case {
            name: "deny with only labels refuses the whole database",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
---
metadata: {name: no-prod}
spec:
  deny: {db_labels: {env: prod}}
",
            db: pg(&[("env", "prod")]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "deny in the same role as the allow",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
  deny: {db_labels: {env: prod}}
",
            db: pg(&[("env", "prod")]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "deny whose labels do not match does nothing",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
  deny: {db_labels: {env: prod}}
",
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        },
        Case {
            name: "deny of one db user refuses that user",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
  deny: {db_labels: {'*': '*'}, db_users: [root]}
",
            db: pg(&[("env", "dev")]),
            db_user: "root",
            db_name: "x",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "deny of one db user leaves the others",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
  deny: {db_labels: {'*': '*'}, db_users: [root]}
",
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        },
        Case {
            name: "deny of db user * refuses every user",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: [app], db_names: ['*']}
---
metadata: {name: nobody}
spec:
  deny: {db_labels: {env: dev}, db_users: ['*']}
",
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "deny of a db name refuses that name on postgres",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
  deny: {db_labels: {'*': '*'}, db_names: [secret]}
",
            db: pg(&[]),
            db_user: "app",
            db_name: "secret",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "deny of a db name is not enforced on mysql",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
  deny: {db_labels: {'*': '*'}, db_names: [secret]}
",
            db: my(&[]),
            db_user: "app",
            db_name: "secret",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "secret",
                roles: &[],
            },
        },
        Case {
            name: "deny with an empty selector never applies",
            roles: "
metadata: {name: dev}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}
  deny: {db_users: [app]}
",
            db: pg(&[]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        },
        Case {
            name: "deny of a db user also applies in provisioning mode",
            roles: "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}, db_names: ['*']}
  deny: {db_labels: {'*': '*'}, db_users: [alice]}
",
            db: pg(&[]),
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Denied,
        },
    ]);
}

#[test]
fn deny_hides_a_database_from_db_ls_only_when_it_names_nothing_else() {
    let total = checker(
        "
metadata: {name: r}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*']}
  deny: {db_labels: {env: prod}}
",
    );
    assert!(total.can_see_db(&pg(&[("env", "dev")])));
    assert!(!total.can_see_db(&pg(&[("env", "prod")])));

    let partial = checker(
        "
metadata: {name: r}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*']}
  deny: {db_labels: {env: prod}, db_roles: [admin]}
",
    );
    assert!(partial.can_see_db(&pg(&[("env", "prod")])));

    // A deny template that expands to nothing narrows the deny; it does not become a deny
    // of the whole database.
    let templated = checker(
        "
metadata: {name: r}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*']}
  deny: {db_labels: {'*': '*'}, db_users: ['{{internal.missing}}']}
",
    );
    assert!(templated.can_see_db(&pg(&[])));

    let none = checker(
        "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: ['*']}
",
    );
    assert!(!none.can_see_db(&pg(&[("env", "prod")])));
    assert!(!none.can_see_db(&pg(&[])));
}

#[test]
fn an_allow_must_come_from_one_role_matching_labels_user_and_name() {
    let split_roles = "
metadata: {name: dev-app}
spec:
  allow: {db_labels: {env: dev}, db_users: [app], db_names: [appdb]}
---
metadata: {name: prod-bob}
spec:
  allow: {db_labels: {env: prod}, db_users: [bob], db_names: [bobdb]}
";
    run(vec![
        Case {
            name: "user allowed only by a role whose labels do not match",
            roles: split_roles,
            db: pg(&[("env", "dev")]),
            db_user: "bob",
            db_name: "appdb",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "name allowed only by a role whose labels do not match",
            roles: split_roles,
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "bobdb",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "one role matches all three",
            roles: split_roles,
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "appdb",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "appdb",
                roles: &[],
            },
        },
        Case {
            name: "user from one role and name from another, same labels",
            roles: "
metadata: {name: a}
spec:
  allow: {db_labels: {env: dev}, db_users: [app], db_names: [appdb]}
---
metadata: {name: b}
spec:
  allow: {db_labels: {env: dev}, db_users: [bob], db_names: [bobdb]}
",
            db: pg(&[("env", "dev")]),
            db_user: "bob",
            db_name: "appdb",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "unknown db user",
            roles: ALLOW_APP_DEV,
            db: pg(&[("env", "dev")]),
            db_user: "root",
            db_name: "x",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "db_users * allows any user",
            roles: "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: ['*'], db_names: ['*']}
",
            db: pg(&[("env", "dev")]),
            db_user: "anyone",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        },
        Case {
            name: "no db_names on postgres allows no name",
            roles: "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: [app]}
",
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "db_names are not enforced on mysql",
            roles: "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: [app], db_names: [only]}
",
            db: my(&[("env", "dev")]),
            db_user: "app",
            db_name: "other",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "other",
                roles: &[],
            },
        },
        Case {
            name: "empty db name defaults to the db user on postgres (allowed)",
            roles: "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: [app], db_names: [app]}
",
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "app",
                roles: &[],
            },
        },
        Case {
            name: "empty db name defaults to the db user on postgres (denied)",
            roles: "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: [app], db_names: [postgres]}
",
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "empty db name stays empty on mysql",
            roles: "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: [app]}
",
            db: my(&[("env", "dev")]),
            db_user: "app",
            db_name: "",
            requested: &[],
            expect: Allowed {
                mode: Off,
                db_name: "",
                roles: &[],
            },
        },
        Case {
            name: "db roles cannot be requested when provisioning is off",
            roles: ALLOW_APP_DEV,
            db: pg(&[("env", "dev")]),
            db_user: "app",
            db_name: "x",
            requested: &["reader"],
            expect: Message("access to database role \"reader\" denied"),
        },
    ]);
}

#[test]
fn label_selectors_in_roles() {
    let allowed = Allowed {
        mode: Off,
        db_name: "x",
        roles: &[],
    };
    let case = |name, roles, labels: &[(&str, &str)], expect| Case {
        name,
        roles,
        db: pg(labels),
        db_user: "app",
        db_name: "x",
        requested: &[],
        expect,
    };
    run(vec![
        case(
            "glob",
            "
metadata: {name: r}
spec: {allow: {db_labels: {env: 'prod-*'}, db_users: [app], db_names: ['*']}}",
            &[("env", "prod-eu")],
            allowed,
        ),
        case(
            "regex",
            "
metadata: {name: r}
spec: {allow: {db_labels: {env: '^(dev|test)[0-9]$'}, db_users: [app], db_names: ['*']}}",
            &[("env", "test7")],
            Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        ),
        case(
            "regex not matching",
            "
metadata: {name: r}
spec: {allow: {db_labels: {env: '^(dev|test)[0-9]$'}, db_users: [app], db_names: ['*']}}",
            &[("env", "test77")],
            Denied,
        ),
        case(
            "wildcard matches an unlabelled db",
            "
metadata: {name: r}
spec: {allow: {db_labels: {'*': '*'}, db_users: [app], db_names: ['*']}}",
            &[],
            Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        ),
        case(
            "empty selector matches nothing",
            "
metadata: {name: r}
spec: {allow: {db_users: [app], db_names: ['*']}}",
            &[("env", "dev")],
            Denied,
        ),
        case(
            "values OR",
            "
metadata: {name: r}
spec: {allow: {db_labels: {env: [prod, dev]}, db_users: [app], db_names: ['*']}}",
            &[("env", "dev")],
            Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        ),
        case(
            "keys AND",
            "
metadata: {name: r}
spec: {allow: {db_labels: {env: dev, team: core}, db_users: [app], db_names: ['*']}}",
            &[("env", "dev"), ("team", "web")],
            Denied,
        ),
        case(
            "label value from a trait",
            "
metadata: {name: r}
spec: {allow: {db_labels: {env: '{{internal.env}}'}, db_users: [app], db_names: ['*']}}",
            &[("env", "dev")],
            Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        ),
        case(
            "label value from a missing trait",
            "
metadata: {name: r}
spec: {allow: {db_labels: {env: '{{internal.region}}'}, db_users: [app], db_names: ['*']}}",
            &[("env", "dev")],
            Denied,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Templates in db_users, db_names and db_roles

#[test]
fn trait_templates_expand_in_users_names_and_roles() {
    let case = |name, roles, db_user, db_name, expect| Case {
        name,
        roles,
        db: pg(&[("env", "dev")]),
        db_user,
        db_name,
        requested: &[],
        expect,
    };
    run(vec![
        case(
            "internal trait in db_users and db_names",
            "
metadata: {name: r}
spec:
  allow:
    db_labels: {env: dev}
    db_users: ['{{internal.db_users}}']
    db_names: ['{{internal.db_names}}']
",
            "app",
            "appdb",
            Allowed {
                mode: Off,
                db_name: "appdb",
                roles: &[],
            },
        ),
        case(
            "internal trait, other user",
            "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: ['{{internal.db_users}}'], db_names: ['*']}
",
            "root",
            "x",
            Denied,
        ),
        case(
            "external trait with prefix and suffix",
            "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: ['svc-{{external.db_users}}-rw'], db_names: ['*']}
",
            "svc-app-rw",
            "x",
            Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        ),
        case(
            "email.local",
            "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: ['{{email.local(external.email)}}'], db_names: ['*']}
",
            "alice.smith",
            "x",
            Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        ),
        case(
            "regexp.replace keeps matching values",
            r#"
metadata: {name: r}
spec:
  allow:
    db_labels: {env: dev}
    db_users: ['{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}']
    db_names: ['*']
"#,
            "analyst",
            "x",
            Allowed {
                mode: Off,
                db_name: "x",
                roles: &[],
            },
        ),
        case(
            "regexp.replace drops values that do not match",
            r#"
metadata: {name: r}
spec:
  allow:
    db_labels: {env: dev}
    db_users: ['{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}']
    db_names: ['*']
"#,
            "staff",
            "x",
            Denied,
        ),
        case(
            "missing trait expands to nothing",
            "
metadata: {name: r}
spec:
  allow: {db_labels: {env: dev}, db_users: ['{{internal.logins}}'], db_names: ['*']}
",
            "",
            "x",
            Denied,
        ),
    ]);
}

#[test]
fn db_roles_expand_from_traits() {
    let c = checker(
        r#"
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow:
    db_labels: {'*': '*'}
    db_names: ['*']
    db_roles:
      - reader
      - '{{internal.db_roles}}'
      - '{{external.missing}}'
      - 'g-{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}'
"#,
    );
    let p = c.provisioning(&pg(&[])).unwrap().unwrap();
    assert_eq!(
        p.roles.into_iter().collect::<Vec<_>>(),
        ["g-analyst", "g-auditor", "reader", "writer"]
    );
}

#[test]
fn bad_templates_and_patterns_are_errors_naming_the_role() {
    let bad = [
        (
            "allow.db_users",
            "spec: {allow: {db_users: ['{{internal.x']}}",
        ),
        (
            "allow.db_names",
            "spec: {allow: {db_names: ['{{secret.x}}']}}",
        ),
        (
            "deny.db_roles",
            "spec: {deny: {db_roles: ['{{nope(internal.x)}}']}}",
        ),
        (
            "allow.db_labels",
            "spec: {allow: {db_labels: {env: '^(dev$'}}}",
        ),
        ("allow.db_roles", "spec: {allow: {db_roles: ['*']}}"),
        (
            "allow.db_permissions[0]",
            "spec: {allow: {db_permissions: [{match: {a: b}, permissions: ['*']}]}}",
        ),
        (
            "deny.db_permissions[0]",
            "spec: {deny: {db_permissions: [{match: {a: b}, permissions: [DROP]}]}}",
        ),
    ];
    for (field, spec) in bad {
        let yaml = format!("metadata: {{name: broken}}\n{spec}");
        let role = &roles(&yaml)[0];
        for err in [
            AccessChecker::new(&alice(), std::slice::from_ref(role)).unwrap_err(),
            validate_role(role).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(text.starts_with("role \"broken\": "), "{text}");
            assert!(text.contains(field), "{field}: {text}");
        }
    }
    let good = &roles(
        "
metadata: {name: fine}
spec:
  allow:
    db_labels: {env: ['^dev$', 'prod-*', '{{internal.env}}']}
    db_users: ['{{email.local(external.email)}}']
    db_permissions: [{match: {schema: public}, permissions: [select, Insert]}]
  deny:
    db_permissions: [{match: {schema: secret}, permissions: ['*']}]
",
    )[0];
    assert_eq!(validate_role(good), Ok(()));
}

// ---------------------------------------------------------------------------------------
// Provisioning mode (item 1)

#[test]
fn provisioning_mode_is_the_strongest_of_matching_roles() {
    let cases: &[(&str, &str, Db, Option<ProvisioningMode>)] = &[
        (
            "keep",
            "
metadata: {name: a}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}}
",
            pg(&[]),
            Some(Keep),
        ),
        (
            "best_effort_drop beats keep",
            "
metadata: {name: a}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}}
---
metadata: {name: b}
spec:
  options: {create_db_user_mode: best_effort_drop}
  allow: {db_labels: {env: dev}}
",
            pg(&[("env", "dev")]),
            Some(BestEffortDrop),
        ),
        (
            "a role whose labels do not match takes no part",
            "
metadata: {name: a}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}}
---
metadata: {name: b}
spec:
  options: {create_db_user_mode: best_effort_drop}
  allow: {db_labels: {env: prod}}
",
            pg(&[("env", "dev")]),
            Some(Keep),
        ),
        (
            "off cannot veto",
            "
metadata: {name: a}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}}
---
metadata: {name: b}
spec:
  options: {create_db_user_mode: off}
  allow: {db_labels: {'*': '*'}, db_users: ['*']}
",
            pg(&[]),
            Some(Keep),
        ),
        (
            "legacy create_db_user: true is keep",
            "
metadata: {name: a}
spec:
  options: {create_db_user: true}
  allow: {db_labels: {'*': '*'}}
",
            my(&[]),
            Some(Keep),
        ),
        (
            "an explicit off wins over the legacy switch in the same role",
            "
metadata: {name: a}
spec:
  options: {create_db_user_mode: off, create_db_user: true}
  allow: {db_labels: {'*': '*'}, db_users: ['*']}
",
            pg(&[]),
            None,
        ),
        (
            "no provisioning role",
            "
metadata: {name: a}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*']}
",
            pg(&[]),
            None,
        ),
    ];
    for (name, yaml, db, expected) in cases {
        let got = checker(yaml).provisioning(db).unwrap().map(|p| p.mode);
        assert_eq!(got, *expected, "{name}\n{yaml}");
    }
    assert_eq!(BestEffortDrop.as_str(), "best_effort_drop");
    assert_eq!(Keep.as_str(), "keep");
    assert_eq!(Off.as_str(), "off");
}

#[test]
fn provisioning_is_refused_for_an_unreachable_database() {
    let c = checker(
        "
metadata: {name: a}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {env: dev}}
",
    );
    let err = c.provisioning(&pg(&[("env", "prod")])).unwrap_err();
    assert_eq!(err.user_message(), GENERIC_DENIAL);
}

// ---------------------------------------------------------------------------------------
// DB roles, requested subset, user name, admin user (items 2–5)

const AUTO: &str = "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow:
    db_labels: {'*': '*'}
    db_names: ['*']
    db_roles: [reader, writer, admin, reader]
---
metadata: {name: no-admin-in-prod}
spec:
  deny:
    db_labels: {env: prod}
    db_roles: [admin]
";

#[test]
fn provisioning_decisions() {
    let mut no_admin = pg(&[("env", "dev")]);
    no_admin.spec.admin_user = None;
    let mut admin_from_labels = pg(&[("teleport.dev/db-admin", "teleport-admin")]);
    admin_from_labels.spec.admin_user = None;
    run(vec![
        Case {
            name: "all allowed roles, sorted and unique",
            roles: AUTO,
            db: pg(&[("env", "dev")]),
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Keep,
                db_name: "x",
                roles: &["admin", "reader", "writer"],
            },
        },
        Case {
            name: "deny db_roles are subtracted",
            roles: AUTO,
            db: pg(&[("env", "prod")]),
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Keep,
                db_name: "x",
                roles: &["reader", "writer"],
            },
        },
        Case {
            name: "deny db_roles * removes every role",
            roles: "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: best_effort_drop}
  allow: {db_labels: {'*': '*'}, db_names: ['*'], db_roles: [reader, writer]}
  deny: {db_labels: {'*': '*'}, db_roles: ['*']}
",
            db: my(&[]),
            db_user: "alice",
            db_name: "",
            requested: &[],
            expect: Allowed {
                mode: BestEffortDrop,
                db_name: "",
                roles: &[],
            },
        },
        Case {
            name: "db roles of a role that does not provision are not granted",
            roles: "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}, db_names: ['*'], db_roles: [reader]}
---
metadata: {name: plain}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*'], db_roles: [superuser]}
",
            db: pg(&[]),
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Keep,
                db_name: "x",
                roles: &["reader"],
            },
        },
        Case {
            name: "requested subset",
            roles: AUTO,
            db: pg(&[("env", "dev")]),
            db_user: "alice",
            db_name: "x",
            requested: &["writer", "reader", "writer"],
            expect: Allowed {
                mode: Keep,
                db_name: "x",
                roles: &["reader", "writer"],
            },
        },
        Case {
            name: "requested role that a deny removed",
            roles: AUTO,
            db: pg(&[("env", "prod")]),
            db_user: "alice",
            db_name: "x",
            requested: &["reader", "admin"],
            expect: Message("access to database role \"admin\" denied"),
        },
        Case {
            name: "requested role nobody grants",
            roles: AUTO,
            db: pg(&[("env", "dev")]),
            db_user: "alice",
            db_name: "x",
            requested: &["r1"],
            expect: Message("access to database role \"r1\" denied"),
        },
        Case {
            name: "wrong db user in provisioning mode",
            roles: AUTO,
            db: pg(&[("env", "dev")]),
            db_user: "bob",
            db_name: "x",
            requested: &[],
            expect: Message(
                "please use your dbward username (\"alice\") to connect instead of \"bob\"",
            ),
        },
        Case {
            name: "db_users are ignored in provisioning mode",
            roles: "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}, db_names: ['*'], db_users: [app]}
",
            db: pg(&[]),
            db_user: "app",
            db_name: "x",
            requested: &[],
            expect: Message(
                "please use your dbward username (\"alice\") to connect instead of \"app\"",
            ),
        },
        Case {
            name: "db_names still apply in provisioning mode on postgres",
            roles: "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}, db_names: [appdb]}
",
            db: pg(&[]),
            db_user: "alice",
            db_name: "other",
            requested: &[],
            expect: Denied,
        },
        Case {
            name: "db_names may come from a role that does not provision",
            roles: "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}}
---
metadata: {name: names}
spec:
  allow: {db_labels: {'*': '*'}, db_names: [appdb]}
",
            db: pg(&[]),
            db_user: "alice",
            db_name: "appdb",
            requested: &[],
            expect: Allowed {
                mode: Keep,
                db_name: "appdb",
                roles: &[],
            },
        },
        Case {
            name: "empty db name defaults to the dbward name in provisioning mode",
            roles: AUTO,
            db: pg(&[]),
            db_user: "alice",
            db_name: "",
            requested: &[],
            expect: Allowed {
                mode: Keep,
                db_name: "alice",
                roles: &["admin", "reader", "writer"],
            },
        },
        Case {
            name: "no admin user",
            roles: AUTO,
            db: no_admin,
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Message(
                "database \"example\" has no admin user configured: automatic user \
                 provisioning needs admin_user in the db resource",
            ),
        },
        Case {
            name: "admin user from discovery labels",
            roles: AUTO,
            db: admin_from_labels,
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Keep,
                db_name: "x",
                roles: &["admin", "reader", "writer"],
            },
        },
    ]);
}

#[test]
fn provisioning_reports_allowed_roles_for_db_ls() {
    let c = checker(AUTO);
    let p = c.provisioning(&pg(&[("env", "prod")])).unwrap().unwrap();
    assert_eq!(p.mode, Keep);
    assert_eq!(
        p.roles,
        ["reader", "writer"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// max_session_ttl

#[test]
fn max_session_ttl_smallest_across_roles_caps_certificates() {
    let c = checker(
        "
metadata: {name: a}
spec: {options: {max_session_ttl: 8h}}
---
metadata: {name: b}
spec: {options: {max_session_ttl: 30m}}
---
metadata: {name: c}
spec: {}
",
    );
    assert_eq!(
        c.cap_ttl(Duration::from_secs(12 * 3600)),
        Duration::from_secs(30 * 60)
    );
    assert_eq!(c.cap_ttl(Duration::from_secs(60)), Duration::from_secs(60));
    let uncapped = checker("metadata: {name: c}\nspec: {}");
    assert_eq!(
        uncapped.cap_ttl(Duration::from_secs(99_999)),
        Duration::from_secs(99_999)
    );
}

// ---------------------------------------------------------------------------------------
// Options that restrict access in Teleport and that dbward does not enforce: fail closed

#[test]
fn unenforced_or_unreadable_restricting_options_refuse_access_naming_the_field() {
    const GRANT: &str = "
metadata: {name: dev}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {env: dev}, db_names: ['*'], db_roles: [reader]}
";
    // (case, extra roles, database labels, field the server log must name; None = allowed)
    type Row<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Row] = &[
        ("no option", "", &[("env", "dev")], None),
        (
            // Enforced: allowed here, the decision asks for an MFA-verified certificate.
            "per-session MFA on the granting role",
            "options: {require_session_mfa: true}\n  allow: {db_labels: {env: dev}}",
            &[("env", "dev")],
            None,
        ),
        (
            "hardware key MFA",
            "options: {require_session_mfa: hardware_key_touch}\n  allow: {db_labels: {env: dev}}",
            &[("env", "dev")],
            Some("require_session_mfa"),
        ),
        (
            "MFA on a role that grants another database only",
            "options: {require_session_mfa: true}\n  allow: {db_labels: {env: prod}}",
            &[("env", "dev")],
            None,
        ),
        (
            "MFA explicitly off",
            "options: {require_session_mfa: false}\n  allow: {db_labels: {env: dev}}",
            &[("env", "dev")],
            None,
        ),
        (
            "trusted device required",
            "options: {device_trust_mode: required}\n  allow: {db_labels: {'*': '*'}}",
            &[("env", "dev")],
            Some("device_trust_mode"),
        ),
        (
            "trusted device optional",
            "options: {device_trust_mode: optional}\n  allow: {db_labels: {'*': '*'}}",
            &[("env", "dev")],
            None,
        ),
        (
            "connection limit, idle timeout and IP pinning are enforced, not refused",
            "options: {max_connections: 1, client_idle_timeout: 15m, pin_source_ip: true}",
            &[("env", "dev")],
            None,
        ),
        (
            "a connection limit dbward cannot read",
            "options: {max_connections: lots}",
            &[("env", "dev")],
            Some("max_connections"),
        ),
        (
            "an idle timeout without a unit",
            "options: {client_idle_timeout: 15}",
            &[("env", "dev")],
            Some("client_idle_timeout"),
        ),
        (
            "an IP pinning switch that is neither on nor off",
            "options: {pin_source_ip: sometimes}",
            &[("env", "dev")],
            Some("pin_source_ip"),
        ),
        (
            "zero limits restrict nothing",
            "options: {max_connections: 0, client_idle_timeout: 0s, pin_source_ip: false}",
            &[("env", "dev")],
            None,
        ),
        (
            "disconnect_expired_cert is always enforced",
            "options: {disconnect_expired_cert: true}",
            &[("env", "dev")],
            None,
        ),
    ];
    for (name, extra, labels, field) in cases {
        let yaml = if extra.is_empty() {
            GRANT.to_string()
        } else {
            format!("{GRANT}---\nmetadata: {{name: extra}}\nspec:\n  {extra}\n")
        };
        let got = checker(&yaml).authorize(&pg(labels), "alice", "appdb", &[]);
        match (field, got) {
            (None, Ok(d)) => assert_eq!(d.db_roles, ["reader"], "{name}"),
            (Some(field), Err(e)) => {
                assert_eq!(e.user_message(), GENERIC_DENIAL, "{name}");
                assert!(e.reason().contains(field), "{name}: {}", e.reason());
                assert!(
                    e.reason().contains("does not enforce")
                        || e.reason().contains("cannot read this value"),
                    "{name}: {}",
                    e.reason()
                );
            }
            (field, got) => panic!("{name}: expected refusal naming {field:?}, got {got:?}"),
        }
    }
}

#[test]
fn the_teleport_role_with_require_session_mfa_asks_for_mfa_on_what_it_grants() {
    // A role as Teleport's per-session MFA guide sets it up, on the provisioning role itself.
    let c = checker(
        "
kind: role
version: v7
metadata: {name: auto-db-users}
spec:
  options:
    create_db_user_mode: keep
    require_session_mfa: true
  allow:
    db_labels: {env: dev}
    db_names: ['*']
    db_roles: [reader]
",
    );
    for db in [pg(&[("env", "dev")]), my(&[("env", "dev")])] {
        let d = c.authorize(&db, "alice", "x", &[]).unwrap();
        assert!(d.session_mfa);
        assert!(c.requires_session_mfa(&db));
    }
    // A database the role does not select is not in its scope.
    assert!(!c.requires_session_mfa(&pg(&[("env", "prod")])));
    // The hardware key levels cannot be enforced: they refuse.
    let hw = checker(
        "
kind: role
version: v7
metadata: {name: hw}
spec:
  options:
    create_db_user_mode: keep
    require_session_mfa: hardware_key_touch
  allow:
    db_labels: {'*': '*'}
    db_roles: [reader]
",
    );
    for db in [pg(&[]), my(&[])] {
        let e = hw.authorize(&db, "alice", "x", &[]).unwrap_err();
        assert_eq!(e.user_message(), GENERIC_DENIAL);
        assert!(e.reason().contains("require_session_mfa"), "{}", e.reason());
    }
}

// ---------------------------------------------------------------------------------------
// Files as Teleport users have them

/// The role of the MariaDB provisioning guide, as printed there (the guide quotes the
/// templates with a space on each side).
const MARIADB_GUIDE_ROLE: &str = r#"kind: role
version: v7
metadata:
  name: auto-db-users
spec:
  options:
    create_db_user_mode: keep
  allow:
    db_labels:
      "*": "*"
    db_names:
    - "*"
    db_roles:
    - reader
    - " {{internal.db_roles}} "
    - " {{external.db_roles}} "
"#;

#[test]
fn the_mariadb_guide_role_grants_the_trait_roles_without_spaces() {
    let parsed = parse_resources(MARIADB_GUIDE_ROLE, "mariadb-guide.yaml").unwrap();
    let dbward_model::Resource::Role(role) = &parsed.resources[0] else {
        panic!("not a role")
    };
    let checker = AccessChecker::new(&alice(), std::slice::from_ref(role)).unwrap();
    let decision = checker.authorize(&my(&[]), "alice", "", &[]).unwrap();
    assert_eq!(decision.db_roles, ["reader", "writer"]);
    let requested = checker
        .authorize(&my(&[]), "alice", "", &strings(&["writer"]))
        .unwrap();
    assert_eq!(requested.db_roles, ["writer"]);
}

#[test]
fn broken_templates_and_patterns_are_refused_when_the_file_is_read() {
    let cases: &[(&str, &str)] = &[
        ("db_roles: ['{{internal.db_roles']", "allow.db_roles"),
        ("db_users: ['{{secret.x}}']", "allow.db_users"),
        (
            "db_names: ['{{internal.a}}{{internal.b}}']",
            "allow.db_names",
        ),
        ("db_labels: {env: '^(unclosed$'}", "allow.db_labels"),
        (
            "db_labels: {'{{nope.fn(internal.x)}}': dev}",
            "allow.db_labels",
        ),
        (
            "db_permissions: [{match: {name: '{{internal.x'}, permissions: [SELECT]}]",
            "allow.db_permissions[0]",
        ),
    ];
    for (allow, field) in cases {
        let text = format!(
            "kind: role\nversion: v7\nmetadata:\n  name: broken\nspec:\n  allow:\n    {allow}\n"
        );
        // The model alone accepts it; the full check refuses it with file and line.
        dbward_model::parse_resources(&text, "roles.yaml").unwrap();
        let err = parse_resources(&text, "roles.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("roles.yaml:3: role \"broken\": ") && err.contains(field),
            "{allow}: {err}"
        );
    }
    let rule = "kind: db_object_import_rule\nversion: v1\nmetadata:\n  name: r\nspec:\n  mappings:\n  - match: {table_names: ['*']}\n    add_labels: {owner: '{{obj.nope'}\n";
    dbward_model::parse_resources(rule, "rules.yaml").unwrap();
    let err = parse_resources(rule, "rules.yaml").unwrap_err().to_string();
    assert!(err.starts_with("rules.yaml:3: "), "{err}");
}

// ---------------------------------------------------------------------------------------
// Allowed Users column of `db ls`

#[test]
fn allowed_users_display_variants() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "provisioning",
            "
metadata: {name: auto}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}, db_users: [ignored]}
",
            "[alice] (Auto-provisioned)",
        ),
        (
            "explicit users from several roles, sorted",
            "
metadata: {name: a}
spec: {allow: {db_labels: {'*': '*'}, db_users: [bob]}}
---
metadata: {name: b}
spec: {allow: {db_labels: {env: dev}, db_users: ['{{internal.db_users}}']}}
---
metadata: {name: c}
spec: {allow: {db_labels: {env: prod}, db_users: [nope]}}
",
            "[app, bob]",
        ),
        (
            "wildcard with exceptions",
            "
metadata: {name: a}
spec:
  allow: {db_labels: {'*': '*'}, db_users: ['*']}
  deny: {db_labels: {'*': '*'}, db_users: [root]}
",
            "[*], except: [root]",
        ),
        (
            "denied users are left out of an explicit list",
            "
metadata: {name: a}
spec:
  allow: {db_labels: {'*': '*'}, db_users: [app, root]}
  deny: {db_labels: {'*': '*'}, db_users: [root]}
",
            "[app]",
        ),
        (
            "no users",
            "
metadata: {name: a}
spec: {allow: {db_labels: {'*': '*'}}}
",
            "(none)",
        ),
    ];
    for (name, yaml, expected) in cases {
        let got = checker(yaml).allowed_users_display(&pg(&[("env", "dev")]));
        assert_eq!(got, *expected, "{name}\n{yaml}");
    }
}

// ---------------------------------------------------------------------------------------
// db_permissions (PROVISIONING §6)

fn object(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn perms(list: &[Permission]) -> BTreeSet<Permission> {
    list.iter().copied().collect()
}

const PERMS: &str = "
metadata: {name: tables}
spec:
  options: {create_db_user_mode: keep}
  allow:
    db_labels: {'*': '*'}
    db_names: ['*']
    db_permissions:
      - match: {object_kind: table, schema: public}
        permissions: [select, INSERT]
      - match: {name: 'audit_*'}
        permissions: [SELECT, UPDATE, DELETE]
      - match: {}
        permissions: [TRUNCATE]
  deny:
    db_labels: {'*': '*'}
    db_permissions:
      - match: {name: audit_log}
        permissions: [DELETE]
      - match: {schema: secret}
        permissions: ['*']
";

#[test]
fn db_permissions_are_allow_minus_deny_per_object() {
    let c = checker(PERMS);
    let d = c.authorize(&pg(&[]), "alice", "app", &[]).unwrap();
    assert!(d.db_roles.is_empty());
    assert_eq!(d.db_permissions.len(), 5);
    use Permission::*;
    let cases: &[(&str, BTreeMap<String, String>, BTreeSet<Permission>)] = &[
        (
            "public table",
            object(&[
                ("object_kind", "table"),
                ("schema", "public"),
                ("name", "t"),
            ]),
            perms(&[Select, Insert]),
        ),
        (
            "public audit table: union of entries",
            object(&[
                ("object_kind", "table"),
                ("schema", "public"),
                ("name", "audit_x"),
            ]),
            perms(&[Select, Insert, Update, Delete]),
        ),
        (
            "deny removes one permission",
            object(&[
                ("object_kind", "table"),
                ("schema", "public"),
                ("name", "audit_log"),
            ]),
            perms(&[Select, Insert, Update]),
        ),
        (
            "deny * clears everything",
            object(&[
                ("object_kind", "table"),
                ("schema", "secret"),
                ("name", "audit_x"),
            ]),
            perms(&[]),
        ),
        (
            "no entry selects the object; the empty match selects nothing",
            object(&[("object_kind", "table"), ("schema", "other"), ("name", "t")]),
            perms(&[]),
        ),
    ];
    for (name, labels, expected) in cases {
        assert_eq!(
            object_permissions(&d.db_permissions, labels),
            *expected,
            "{name}"
        );
    }
    let all: Vec<_> = cases.iter().map(|(_, l, _)| l.clone()).collect();
    let per_object = permissions_for_objects(&d.db_permissions, &all);
    assert_eq!(per_object.len(), cases.len());
    assert_eq!(per_object[0], perms(&[Select, Insert]));
}

#[test]
fn db_permissions_on_mysql_are_refused_not_silently_ignored() {
    let c = checker(PERMS);
    let denied = c.authorize(&my(&[]), "alice", "", &[]).unwrap_err();
    assert!(
        matches!(denied.kind(), DenialKind::PermissionsUnsupported { .. }),
        "{denied:?}"
    );
    assert!(
        denied
            .user_message()
            .contains("db_permissions are only supported on PostgreSQL"),
        "{}",
        denied.user_message()
    );
}

#[test]
fn db_permissions_and_db_roles_are_mutually_exclusive() {
    let both = "
metadata: {name: roles}
spec:
  options: {create_db_user_mode: keep}
  allow: {db_labels: {'*': '*'}, db_names: ['*'], db_roles: [reader]}
---
metadata: {name: tables}
spec:
  allow:
    db_labels: {env: dev}
    db_permissions: [{match: {schema: public}, permissions: [SELECT]}]
";
    run(vec![
        Case {
            name: "roles and permissions together",
            roles: both,
            db: pg(&[("env", "dev")]),
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Message(
                "fine-grained database permissions and database roles are mutually exclusive",
            ),
        },
        Case {
            name: "permissions role does not select this database",
            roles: both,
            db: pg(&[("env", "prod")]),
            db_user: "alice",
            db_name: "x",
            requested: &[],
            expect: Allowed {
                mode: Keep,
                db_name: "x",
                roles: &["reader"],
            },
        },
    ]);
}

#[test]
fn import_rules_label_objects_by_priority() {
    let mut db = pg(&[("env", "prod")]);
    db.metadata.name = "orders".into();
    let default_rules = ImportRules::new(&[]).unwrap();
    let table = DbObject::table("shop", "public", "orders");
    assert_eq!(
        default_rules.label(&db, &table),
        Some(object(&[
            ("object_kind", "table"),
            ("database", "shop"),
            ("schema", "public"),
            ("name", "orders"),
            ("protocol", "postgres"),
            ("database_service_name", "orders"),
        ]))
    );

    let rules: Vec<DbObjectImportRule> = documents(
        "
metadata: {name: high}
spec:
  priority: 20
  database_labels: {env: prod}
  mappings:
    - match: {table_names: ['*']}
      scope: {schema_names: ['secret*']}
      add_labels: {confidential: 'yes', owner: security}
---
metadata: {name: low}
spec:
  priority: 10
  database_labels: [{name: env, values: [prod, staging]}]
  mappings:
    - match: {table_names: ['*']}
      add_labels: {owner: '{{obj.schema}}-team', schema: '{{obj.schema}}', object_kind: table}
---
metadata: {name: other-db}
spec:
  priority: 99
  database_labels: {env: dev}
  mappings:
    - match: {table_names: ['*']}
      add_labels: {owner: nobody}
---
metadata: {name: no-tables}
spec:
  priority: 50
  database_labels: {'*': '*'}
  mappings:
    - match: {}
      add_labels: {owner: nobody}
",
    )
    .map(|doc| serde_yaml_ng::from_str(doc).unwrap())
    .collect();
    let rules = ImportRules::new(&rules).unwrap();
    assert_eq!(
        rules.label(&db, &DbObject::table("shop", "secret_x", "keys")),
        Some(object(&[
            ("confidential", "yes"),
            ("object_kind", "table"),
            ("owner", "security"),
            ("schema", "secret_x"),
        ]))
    );
    assert_eq!(
        rules.label(&db, &DbObject::table("shop", "public", "t")),
        Some(object(&[
            ("object_kind", "table"),
            ("owner", "public-team"),
            ("schema", "public"),
        ]))
    );
    let dev = pg(&[("env", "test")]);
    assert_eq!(rules.label(&dev, &table), None, "no rule selects this db");
}

#[test]
fn import_rules_with_bad_patterns_or_fields_are_refused() {
    for (field, spec) in [
        (
            "mappings[0].match.table_names",
            "{mappings: [{match: {table_names: ['^($']}}]}",
        ),
        (
            "mappings[0].add_labels.x",
            "{mappings: [{match: {table_names: ['*']}, add_labels: {x: '{{obj.owner}}'}}]}",
        ),
        (
            "mappings[0].add_labels.x",
            "{mappings: [{match: {table_names: ['*']}, add_labels: {x: '{{internal.x}}'}}]}",
        ),
    ] {
        let yaml = format!("metadata: {{name: bad}}\nspec: {spec}");
        let rule: DbObjectImportRule = serde_yaml_ng::from_str(&yaml).unwrap();
        let err = ImportRules::new(&[rule]).unwrap_err().to_string();
        assert!(
            err.starts_with("db_object_import_rule \"bad\": ") && err.contains(field),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Properties

fn small_text() -> impl Strategy<Value = String> {
    // A small alphabet so that random selectors and labels actually meet.
    proptest::string::string_regex("[ab*^$.{}()]{0,6}").unwrap()
}

proptest! {
    #[test]
    fn label_matching_never_panics(
        selector in proptest::collection::btree_map(small_text(), proptest::collection::vec(small_text(), 0..3), 0..3),
        target in proptest::collection::btree_map(small_text(), small_text(), 0..3),
    ) {
        let labels = dbward_model::Labels(
            selector.into_iter().map(|(k, v)| (k, dbward_model::LabelValues::Many(v))).collect(),
        );
        if let Ok(compiled) = LabelSelector::compile(&labels, &BTreeMap::new()) {
            let _ = compiled.matches(&target);
            if labels.is_empty() {
                prop_assert!(!compiled.matches(&target));
            }
        }
    }

    #[test]
    fn templates_never_panic(
        text in prop_oneof![
            ".{0,40}",
            "[a-z]{0,3}\\{\\{[ a-z.()\"`\\[\\],^$*\\\\]{0,24}\\}\\}[a-z{}]{0,3}",
            "\\{\\{ ?(internal|external|obj|email|regexp)\\.[a-z]{0,8}[(\\[]?[a-z.\", ]{0,16}[)\\]]? ?\\}\\}",
        ],
        value in ".{0,20}",
    ) {
        for namespaces in [template::ROLE_NAMESPACES, template::OBJECT_NAMESPACES] {
            if let Ok(t) = template::Template::parse(&text, namespaces) {
                let out = t.expand(&|_, _| vec![value.clone()]);
                if t.is_literal() {
                    prop_assert_eq!(out, vec![text.clone()]);
                } else {
                    // An expression never produces an empty value.
                    prop_assert!(out.iter().all(|v| !v.is_empty()));
                }
            }
        }
    }

    #[test]
    fn template_functions_never_panic(
        inner in "(internal|external)\\.[a-z]{1,5}",
        pattern in "[a-z^$.*()]{0,8}",
        values in proptest::collection::vec(".{0,12}", 0..4),
    ) {
        for text in [
            format!("{{{{email.local({inner})}}}}"),
            format!("x{{{{regexp.replace({inner}, \"{pattern}\", \"$1\")}}}}y"),
        ] {
            if let Ok(t) = template::Template::parse(&text, template::ROLE_NAMESPACES) {
                let _ = t.expand(&|_, _| values.clone());
            }
        }
    }

    #[test]
    fn deny_always_beats_allow(
        env in "[a-c]{1,2}",
        allow_env in "[a-c*]{1,2}",
        deny_env in "[a-c*]{1,2}",
        db_user in "[a-c]{1,2}",
        provisioning in any::<bool>(),
        deny_users in any::<bool>(),
    ) {
        let mode = if provisioning { "keep" } else { "off" };
        let deny_extra = if deny_users { format!(", db_users: [{db_user}]") } else { String::new() };
        let yaml = format!(
            "
metadata: {{name: allow}}
spec:
  options: {{create_db_user_mode: {mode}}}
  allow: {{db_labels: {{env: '{allow_env}'}}, db_users: ['*'], db_names: ['*'], db_roles: [r]}}
---
metadata: {{name: deny}}
spec:
  deny: {{db_labels: {{env: '{deny_env}'}}{deny_extra}}}
"
        );
        let mut user = User::new("alice", &[] as &[&str]);
        user.metadata.name = db_user.clone();
        let checker = AccessChecker::new(&user, &roles(&yaml)).unwrap();
        let target = pg(&[("env", env.as_str())]);
        let deny_applies = pattern::Pattern::compile(&deny_env).unwrap().matches(&env);
        let result = checker.authorize(&target, &db_user, "x", &[]);
        if deny_applies {
            prop_assert!(result.is_err());
            prop_assert_eq!(
                result.as_ref().map(|_| ()).unwrap_err().user_message(),
                GENERIC_DENIAL
            );
            if !deny_users {
                prop_assert!(!checker.can_see_db(&target));
            }
        }
        let allow_applies = pattern::Pattern::compile(&allow_env).unwrap().matches(&env);
        if allow_applies && !deny_applies {
            prop_assert!(result.is_ok());
        }
    }
}

#[test]
fn session_limits_take_the_smallest_non_zero_value_of_the_users_roles() {
    let c = checker(
        "
metadata: {name: dev}
spec:
  options: {create_db_user_mode: keep, max_connections: 5, client_idle_timeout: 10m}
  allow: {db_labels: {env: dev}, db_names: ['*'], db_roles: [reader]}
---
metadata: {name: tight}
spec:
  options: {max_connections: 2, client_idle_timeout: 0s, pin_source_ip: true}
---
metadata: {name: loose}
spec:
  options: {max_connections: 0, client_idle_timeout: 1h, pin_source_ip: false}
",
    );
    let expected = dbward_rbac_limits(Some(2), Some(Duration::from_secs(600)), true);
    assert_eq!(c.limits(), expected);
    let d = c
        .authorize(&pg(&[("env", "dev")]), "alice", "appdb", &[])
        .unwrap();
    assert_eq!(d.limits, expected);
    let none = checker("metadata: {name: plain}\nspec: {}");
    assert_eq!(none.limits(), SessionLimits::default());
}

fn dbward_rbac_limits(
    max_connections: Option<u64>,
    client_idle_timeout: Option<Duration>,
    pin_source_ip: bool,
) -> SessionLimits {
    SessionLimits {
        max_connections,
        client_idle_timeout,
        pin_source_ip,
    }
}

// ---------------------------------------------------------------------------------------
// Database names `dbward db check` can know

#[test]
fn literal_db_names_are_those_of_selecting_roles_less_wildcards_and_denials() {
    let c = checker(
        "
metadata: {name: a}
spec:
  allow: {db_labels: {env: dev}, db_names: [app, '*', reports]}
---
metadata: {name: b}
spec:
  allow: {db_labels: {env: prod}, db_names: [billing]}
---
metadata: {name: c}
spec:
  deny: {db_labels: {env: dev}, db_names: [reports]}
",
    );
    let names: Vec<String> = c
        .literal_db_names(&pg(&[("env", "dev")]))
        .into_iter()
        .collect();
    assert_eq!(names, strings(&["app"]));
    assert!(c.literal_db_names(&pg(&[("env", "test")])).is_empty());
}
