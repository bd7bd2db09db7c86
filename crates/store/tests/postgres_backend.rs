//! The PostgreSQL backend against a real server: the behaviours the SQLite backend's tests
//! cover, the lock across two gateway instances sharing one database, migrations, and TLS with
//! a client certificate.

use std::sync::Arc;
use std::time::Duration;

use dbward_store::{
    ActivationRecord, AuditQuery, AuditRecord, PutMode, SessionRecord, Store, StoreError,
};
use dbward_testkit::{shared_cas, shared_pg, unique_name, ClientCertFiles};
use tokio::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// A new empty database on the shared server; returns its superuser DSN (Unix socket).
fn fresh_database() -> Fallible<(String, String)> {
    let pg = shared_pg()?;
    let name = unique_name("store");
    pg.psql_super(&format!("CREATE DATABASE {name}"))?;
    Ok((name.clone(), pg.super_conninfo(&name)))
}

fn open() -> Fallible<Store> {
    let (_, dsn) = fresh_database()?;
    Ok(Store::open_postgres(&dsn)?)
}

#[tokio::test]
async fn resources_put_get_list_delete_and_bump_the_revision() -> TestResult {
    let store = open()?;
    let start = store.resources_revision().await?;
    assert_eq!(start, 0);
    store
        .put_resource("role", "b", r#"{"n":"b"}"#, PutMode::CreateOnly)
        .await?;
    store
        .put_resource("role", "a", r#"{"n":"a"}"#, PutMode::CreateOnly)
        .await?;
    store
        .put_resource("user", "a", "{}", PutMode::CreateOnly)
        .await?;
    assert_eq!(store.resources_revision().await?, start + 3);
    assert_eq!(
        store.get_resource("role", "a").await?.as_deref(),
        Some(r#"{"n":"a"}"#)
    );
    assert_eq!(store.get_resource("role", "c").await?, None);
    let names: Vec<String> = store
        .list_resources("role")
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["a", "b"]);

    store
        .put_resource("role", "a", "{}", PutMode::Upsert)
        .await?;
    assert_eq!(
        store.get_resource("role", "a").await?.as_deref(),
        Some("{}")
    );
    assert_eq!(store.resources_revision().await?, start + 4);

    assert!(store.delete_resource("role", "a").await?);
    assert!(!store.delete_resource("role", "a").await?);
    assert_eq!(store.resources_revision().await?, start + 5);
    assert_eq!(store.list_resources("role").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn create_only_put_of_a_taken_name_fails_and_changes_nothing() -> TestResult {
    let store = open()?;
    store
        .put_resource("db", "orders", "v1", PutMode::CreateOnly)
        .await?;
    let revision = store.resources_revision().await?;
    let err = store
        .put_resource("db", "orders", "v2", PutMode::CreateOnly)
        .await
        .err();
    match err {
        Some(StoreError::AlreadyExists { kind, name }) => {
            assert_eq!((kind.as_str(), name.as_str()), ("db", "orders"));
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        store.get_resource("db", "orders").await?.as_deref(),
        Some("v1")
    );
    assert_eq!(store.resources_revision().await?, revision);
    Ok(())
}

#[tokio::test]
async fn writes_from_another_instance_bump_the_shared_revision() -> TestResult {
    let (_, dsn) = fresh_database()?;
    let first = Store::open_postgres(&dsn)?;
    let second = Store::open_postgres(&dsn)?;
    let seen = first.resources_revision().await?;
    second
        .put_resource("role", "dev", "{}", PutMode::CreateOnly)
        .await?;
    assert_eq!(first.resources_revision().await?, seen + 1);
    assert_eq!(
        first.get_resource("role", "dev").await?.as_deref(),
        Some("{}")
    );
    Ok(())
}

#[tokio::test]
async fn first_ca_of_a_kind_wins() -> TestResult {
    let store = open()?;
    assert!(store.put_ca_if_absent("user", "cert1", "key1").await?);
    assert!(!store.put_ca_if_absent("user", "cert2", "key2").await?);
    assert!(store.put_ca_if_absent("host", "cert3", "key3").await?);
    assert_eq!(
        store.get_cas().await?,
        [
            ("host".to_owned(), "cert3".to_owned(), "key3".to_owned()),
            ("user".to_owned(), "cert1".to_owned(), "key1".to_owned()),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn password_hashes_are_set_replaced_and_deleted() -> TestResult {
    let store = open()?;
    assert_eq!(store.get_password_hash("alice").await?, None);
    store.set_password_hash("alice", "$argon2id$one").await?;
    store.set_password_hash("alice", "$argon2id$two").await?;
    assert_eq!(
        store.get_password_hash("alice").await?.as_deref(),
        Some("$argon2id$two")
    );
    assert!(store.delete_password("alice").await?);
    assert!(!store.delete_password("alice").await?);
    assert_eq!(store.get_password_hash("alice").await?, None);
    Ok(())
}

fn all(limit: usize) -> AuditQuery {
    AuditQuery {
        limit,
        ..AuditQuery::default()
    }
}

#[tokio::test]
async fn audit_search_filters_and_keeps_the_most_recent_matches() -> TestResult {
    let store = open()?;
    let events = [
        (1_000, "db.session.start", "alice"),
        (2_000, "db.session.query", "alice"),
        (3_000, "db.session.start", "bob"),
        (4_000, "db.session.query", "alice"),
        (5_000, "db.session.end", "alice"),
    ];
    for (time, event, user) in events {
        store
            .append_audit(&format!("{event}@{time}"), event, user, time)
            .await?;
    }
    let everything = store.search_audit(all(100)).await?;
    assert_eq!(everything.len(), 5);
    assert_eq!(everything[0], "db.session.start@1000");

    let queries = store
        .search_audit(AuditQuery {
            event_type: Some("db.session.query".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await?;
    assert_eq!(queries, ["db.session.query@2000", "db.session.query@4000"]);

    let bob = store
        .search_audit(AuditQuery {
            user: Some("bob".into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await?;
    assert_eq!(bob, ["db.session.start@3000"]);

    let recent = store
        .search_audit(AuditQuery {
            user: Some("alice".into()),
            since_unix_ms: Some(2_000),
            limit: 2,
            ..AuditQuery::default()
        })
        .await?;
    assert_eq!(recent, ["db.session.query@4000", "db.session.end@5000"]);
    Ok(())
}

fn record(body: &str, time: i64) -> AuditRecord {
    AuditRecord {
        body: body.into(),
        event_type: "db.session.query".into(),
        user: "alice".into(),
        time_unix_ms: time,
    }
}

#[tokio::test]
async fn audit_batch_keeps_its_order_and_is_all_or_nothing() -> TestResult {
    let store = open()?;
    store.append_audit_batch(Vec::new()).await?;
    store
        .append_audit_batch(vec![
            record("first", 10),
            record("second", 10),
            record("third", 5),
        ])
        .await?;
    assert_eq!(
        store.search_audit(all(10)).await?,
        ["third", "first", "second"]
    );
    // PostgreSQL text cannot hold a NUL character: the second record fails the whole batch.
    let err = store
        .append_audit_batch(vec![record("fourth", 20), record("bad\0body", 21)])
        .await;
    assert!(
        err.is_err(),
        "a batch with an unstorable record was accepted"
    );
    assert_eq!(store.search_audit(all(10)).await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn activations_are_recorded_replaced_and_forgotten() -> TestResult {
    let store = open()?;
    let key = "postgres/db1:5432/alice";
    let record = |mode: &str| ActivationRecord {
        user_key: key.into(),
        db_service: "orders".into(),
        dbward_user: "alice".into(),
        mode: mode.into(),
        instance_id: "i1".into(),
        updated_unix_ms: 0,
    };
    assert_eq!(store.get_activation(key).await?, None);
    let before = store.now_unix_ms().await?;
    store.put_activation(record("best_effort_drop")).await?;
    store.put_activation(record("keep")).await?;
    let stored = store.get_activation(key).await?.ok_or("no record")?;
    assert!(stored.updated_unix_ms >= before);
    assert_eq!(
        ActivationRecord {
            updated_unix_ms: 0,
            ..stored
        },
        record("keep")
    );
    assert!(store.delete_activation(key).await?);
    assert!(!store.delete_activation(key).await?);
    assert_eq!(store.get_activation(key).await?, None);
    Ok(())
}

#[tokio::test]
async fn sessions_instances_and_values_round_trip() -> TestResult {
    let store = open()?;
    let session = |sid: &str, instance: &str, started| SessionRecord {
        sid: sid.into(),
        instance_id: instance.into(),
        db_service: "orders".into(),
        db_user: "alice".into(),
        dbward_user: "alice".into(),
        mode: "keep".into(),
        started_unix_ms: started,
        engine: "postgres".into(),
        server: "db1:5432".into(),
        backend_id: Some(started * 10),
    };
    store.register_session(session("s2", "i1", 20)).await?;
    store.register_session(session("s1", "i2", 10)).await?;
    store.register_session(session("s3", "i1", 30)).await?;
    store.register_session(session("s3", "i1", 31)).await?;
    let listed = store.list_sessions().await?;
    let sids: Vec<&str> = listed.iter().map(|s| s.sid.as_str()).collect();
    assert_eq!(sids, ["s1", "s2", "s3"]);
    assert_eq!(listed[2], session("s3", "i1", 31));
    assert!(store.end_session("s1").await?);
    assert!(!store.end_session("s1").await?);
    assert_eq!(store.end_sessions_of_instance("i1").await?, 2);
    assert!(store.list_sessions().await?.is_empty());

    let before = store.now_unix_ms().await?;
    store.heartbeat_instance("i2").await?;
    store.heartbeat_instance("i1").await?;
    assert_eq!(store.live_instances(before).await?, ["i1", "i2"]);
    assert!(store.live_instances(before + 60_000).await?.is_empty());

    assert_eq!(store.kv_get("k").await?, None);
    store.kv_put("k", "v1").await?;
    store.kv_put("k", "v2").await?;
    assert_eq!(store.kv_get("k").await?.as_deref(), Some("v2"));
    assert!(store.kv_delete("k").await?);
    assert!(!store.kv_delete("k").await?);
    Ok(())
}

/// A cancel key is asked for by its hash through any instance and taken only by the instance
/// holding it, once; a hash nobody holds marks nothing; a forgotten key matches no more.
#[tokio::test]
async fn cancel_requests_reach_the_instance_holding_the_key() -> TestResult {
    let store = open()?;
    let wait = Duration::from_secs(10);
    assert!(store.add_cancel_key("h1", "i1", "s1").await?);
    assert!(store.add_cancel_key("h2", "i2", "s2").await?);
    assert!(
        !store.add_cancel_key("h1", "i2", "s3").await?,
        "a taken hash"
    );
    assert!(store.take_cancel_requests("i1", wait).await?.is_empty());

    assert!(!store.request_cancel("unknown").await?);
    assert!(store.request_cancel("h1").await?);
    assert!(store.take_cancel_requests("i2", wait).await?.is_empty());
    assert_eq!(store.take_cancel_requests("i1", wait).await?, ["h1"]);
    assert!(
        store.take_cancel_requests("i1", wait).await?.is_empty(),
        "taken once"
    );

    // A request older than the caller accepts is cleared, not returned.
    assert!(store.request_cancel("h2").await?);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store
        .take_cancel_requests("i2", Duration::from_millis(10))
        .await?
        .is_empty());
    assert!(store.take_cancel_requests("i2", wait).await?.is_empty());

    assert!(store.remove_cancel_key("h1").await?);
    assert!(!store.remove_cancel_key("h1").await?);
    assert!(!store.request_cancel("h1").await?);

    // Keys of instances without a recent heartbeat are forgotten.
    let before = store.now_unix_ms().await?;
    store.heartbeat_instance("i1").await?;
    assert!(store.add_cancel_key("h3", "i1", "s4").await?);
    assert_eq!(
        store.forget_cancel_keys_of_silent_instances(before).await?,
        1
    );
    assert!(!store.request_cancel("h2").await?);
    assert!(store.request_cancel("h3").await?);
    Ok(())
}

#[tokio::test]
async fn clock_is_the_database_clock_and_moves_forward() -> TestResult {
    let store = open()?;
    let pg = shared_pg()?;
    let first = store.now_unix_ms().await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = store.now_unix_ms().await?;
    assert!(second >= first + 50, "{first} then {second}");
    let server: i64 = pg
        .psql_super("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint")?
        .parse()?;
    assert!((server - second).abs() < 5_000, "{server} vs {second}");
    Ok(())
}

#[tokio::test]
async fn reopening_keeps_everything_and_applies_migrations_once() -> TestResult {
    let (name, dsn) = fresh_database()?;
    {
        let store = Store::open_postgres(&dsn)?;
        store
            .put_resource("role", "dev", "{}", PutMode::CreateOnly)
            .await?;
        store.put_ca_if_absent("user", "cert", "key").await?;
        store.set_password_hash("alice", "phc").await?;
        store
            .append_audit("{}", "db.session.start", "alice", 1)
            .await?;
        store.kv_put("k", "v").await?;
    }
    let store = Store::open_postgres(&dsn)?;
    assert_eq!(
        store.get_resource("role", "dev").await?.as_deref(),
        Some("{}")
    );
    assert_eq!(store.resources_revision().await?, 1);
    assert_eq!(store.get_cas().await?.len(), 1);
    assert_eq!(
        store.get_password_hash("alice").await?.as_deref(),
        Some("phc")
    );
    assert_eq!(store.search_audit(all(10)).await?.len(), 1);
    assert_eq!(store.kv_get("k").await?.as_deref(), Some("v"));
    let versions = shared_pg()?.psql_super_in(
        &name,
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
    )?;
    assert_eq!(versions, "1,2,3");
    Ok(())
}

#[test]
fn instances_opening_an_empty_database_together_migrate_it_once() -> TestResult {
    let (name, dsn) = fresh_database()?;
    let results: Vec<Result<Store, StoreError>> = std::thread::scope(|scope| {
        let openers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Store::open_postgres(&dsn)))
            .collect();
        openers
            .into_iter()
            .map(|opener| {
                opener
                    .join()
                    .unwrap_or_else(|_| Err(StoreError::Corrupt("opener panicked".into())))
            })
            .collect()
    });
    for result in results {
        result?;
    }
    let versions = shared_pg()?.psql_super_in(&name, "SELECT count(*) FROM schema_migrations")?;
    assert_eq!(versions, "3");
    Ok(())
}

#[test]
fn a_schema_newer_than_this_version_is_refused() -> TestResult {
    let (name, dsn) = fresh_database()?;
    drop(Store::open_postgres(&dsn)?);
    shared_pg()?.psql_super_in(&name, "INSERT INTO schema_migrations (version) VALUES (99)")?;
    let err = Store::open_postgres(&dsn).err();
    assert!(matches!(err, Some(StoreError::Corrupt(_))), "{err:?}");
    Ok(())
}

#[test]
fn bad_connection_strings_are_rejected_without_repeating_the_password() {
    for dsn in [
        "host=/nonexistent/socket/dir dbname=x password=hunter2 connect_timeout=2",
        "postgres://u:hunter2@h/x?sslmode=often",
    ] {
        match Store::open_postgres(dsn) {
            Err(err) => assert!(!err.to_string().contains("hunter2"), "{err}"),
            Ok(_) => panic!("opened {dsn:?}"),
        }
    }
}

#[tokio::test]
async fn calls_from_many_threads_at_once_all_land() -> TestResult {
    let store = open()?;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_resource("role", &format!("r{i:02}"), "{}", PutMode::CreateOnly)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    assert_eq!(store.list_resources("role").await?.len(), 16);
    assert_eq!(store.resources_revision().await?, 16);
    Ok(())
}

// The lock across two gateway instances: two `Store` handles on one database.

const KEY: &str = "provision/orders/alice";

fn two_instances() -> Fallible<(Store, Store)> {
    let (_, dsn) = fresh_database()?;
    Ok((Store::open_postgres(&dsn)?, Store::open_postgres(&dsn)?))
}

#[tokio::test]
async fn second_instance_waits_until_the_first_releases() -> TestResult {
    let (first, second) = two_instances()?;
    let held = first.lock(KEY, "gw1", Duration::from_secs(1)).await?;
    let waiter =
        tokio::spawn(async move { second.lock(KEY, "gw2", Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "second instance got the lock while it was held"
    );
    held.release().await?;
    let next = tokio::time::timeout(Duration::from_secs(5), waiter).await???;
    assert_eq!(next.key(), KEY);
    next.release().await?;
    Ok(())
}

#[tokio::test]
async fn waiting_too_long_on_another_instance_times_out_with_the_key() -> TestResult {
    let (first, second) = two_instances()?;
    let held = first.lock(KEY, "gw1", Duration::from_secs(1)).await?;
    let started = Instant::now();
    let err = second
        .lock(KEY, "gw2", Duration::from_millis(200))
        .await
        .err();
    assert!(
        matches!(&err, Some(StoreError::LockTimeout { key }) if key == KEY),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    second
        .lock("provision/orders/bob", "gw2", Duration::ZERO)
        .await?
        .release()
        .await?;
    held.release().await?;
    Ok(())
}

#[tokio::test]
async fn lease_of_a_dead_instance_is_taken_over_after_it_expires() -> TestResult {
    let (dead, alive) = two_instances()?;
    let ttl = Duration::from_millis(400);
    // An instance that took the lease and died: nobody renews or releases it.
    let backend = dead.backend().clone();
    let taken =
        tokio::task::spawn_blocking(move || backend.try_acquire_lease(KEY, "dead", "token", ttl))
            .await??;
    assert!(taken);
    drop(dead);
    let started = Instant::now();
    let early = alive
        .lock(KEY, "gw2", Duration::from_millis(100))
        .await
        .err();
    assert!(
        matches!(early, Some(StoreError::LockTimeout { .. })),
        "{early:?}"
    );
    let guard = alive.lock(KEY, "gw2", Duration::from_secs(5)).await?;
    assert!(started.elapsed() >= ttl - Duration::from_millis(50));
    let backend = alive.backend().clone();
    let renewed =
        tokio::task::spawn_blocking(move || backend.renew_lease(KEY, "token", ttl)).await??;
    assert!(!renewed, "the dead holder's token still counted");
    guard.release().await?;
    Ok(())
}

#[tokio::test]
async fn held_lease_is_renewed_past_its_ttl() -> TestResult {
    let (first, second) = two_instances()?;
    let ttl = Duration::from_millis(300);
    let held = first
        .lock_with_ttl(KEY, "gw1", ttl, Duration::from_secs(1))
        .await?;
    let err = second.lock(KEY, "gw2", ttl * 4).await.err();
    assert!(
        matches!(err, Some(StoreError::LockTimeout { .. })),
        "{err:?}"
    );
    assert!(!held.is_lost());
    held.release().await?;
    Ok(())
}

#[tokio::test]
async fn lock_makes_read_modify_write_exclusive_across_instances() -> TestResult {
    let (first, second) = two_instances()?;
    let stores = Arc::new([first, second]);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let stores = stores.clone();
            tokio::spawn(async move {
                let store = &stores[i % 2];
                let guard = store
                    .lock(KEY, &format!("gw{i}"), Duration::from_secs(30))
                    .await?;
                let count: u32 = match store.kv_get("count").await? {
                    Some(value) => value.parse().unwrap_or(u32::MAX),
                    None => 0,
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
                store.kv_put("count", &(count + 1).to_string()).await?;
                guard.release().await?;
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    assert_eq!(stores[0].kv_get("count").await?.as_deref(), Some("12"));
    Ok(())
}

// TLS over TCP: the test server only accepts TCP with a client certificate.

#[tokio::test]
async fn tls_with_a_client_certificate_and_verified_server_name_works() -> TestResult {
    let pg = shared_pg()?;
    let (name, _) = fresh_database()?;
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue(shared_cas()?, "postgres", dir.path())?;
    let dsn = format!(
        "host=localhost port={} user=postgres dbname={name} sslmode=verify-full \
         sslrootcert='{}' sslcert='{}' sslkey='{}'",
        pg.port,
        files.server_ca.display(),
        files.crt.display(),
        files.key.display()
    );
    let store = Store::open_postgres(&dsn)?;
    store.kv_put("over", "tls").await?;
    assert_eq!(store.kv_get("over").await?.as_deref(), Some("tls"));
    let ssl = pg.psql_super_in(
        &name,
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND datname = current_database() AND client_dn IS NOT NULL",
    )?;
    assert_ne!(ssl, "0", "no TLS connection with a client certificate");
    Ok(())
}

#[test]
fn tls_refuses_a_server_not_signed_by_the_configured_ca() -> TestResult {
    let pg = shared_pg()?;
    let (name, _) = fresh_database()?;
    let dir = tempfile::tempdir()?;
    let cas = shared_cas()?;
    // The db-client CA does not sign server certificates.
    let files =
        ClientCertFiles::issue_with(&cas.db_client, &cas.db_client, "postgres", dir.path())?;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{name}?sslmode=verify-ca&sslrootcert={}&sslcert={}&sslkey={}",
        pg.port,
        files.server_ca.display(),
        files.crt.display(),
        files.key.display()
    );
    let err = Store::open_postgres(&url).err();
    let message = err.map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(message.contains("certificate"), "{message:?}");
    Ok(())
}

#[test]
fn verify_full_checks_the_server_name_and_verify_ca_does_not() -> TestResult {
    let pg = shared_pg()?;
    let (name, _) = fresh_database()?;
    let dir = tempfile::tempdir()?;
    let files = ClientCertFiles::issue(shared_cas()?, "postgres", dir.path())?;
    // Dial 127.0.0.1 but expect a name the server certificate does not cover.
    let dsn = |mode: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={} user=postgres dbname={name} \
             sslmode={mode} sslrootcert='{}' sslcert='{}' sslkey='{}'",
            pg.port,
            files.server_ca.display(),
            files.crt.display(),
            files.key.display()
        )
    };
    let message = Store::open_postgres(&dsn("verify-full"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("not valid for name"), "{message:?}");
    Store::open_postgres(&dsn("verify-ca"))?;
    Ok(())
}
