//! Prometheus metrics of one gateway, served as text on `metrics_listen_addr` (`GET /metrics`,
//! plain HTTP; off when the key is absent or empty).
//!
//! Every metric has one recording method here, and every name, label and help text is written
//! here once. Most numbers are derived from events other modules already produce, so that the
//! session pipeline carries as few metric calls as possible:
//!
//! - sessions started and active come from the audit events (`db.session.start` with
//!   `success: true`, `db.session.end`) as [`crate::audit::AuditLog`] emits them;
//! - the connection setup latency runs from the listener's accept (a task-local instant set
//!   by `listen::accept_loop`) to that same `db.session.start`;
//! - the audit queue depth and the spool are read from the audit log at scrape time.
//!
//! The session code calls in only where nothing else sees the number: failures (with their
//! [`ErrorKind`]), activation and teardown latencies, relayed bytes, reconciler outcomes.
//!
//! This module must not decide anything: a disabled registry ([`Metrics::disabled`]) turns every
//! method into a no-op, and recording never fails or blocks a connection.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbward_provision::DeactivateOutcome;
use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, AuditLog, SessionFields};
use crate::session::SessionError;

const SESSIONS_ACTIVE: &str = "dbward_sessions_active";
const SESSIONS_STARTED: &str = "dbward_sessions_started_total";
const SESSION_FAILURES: &str = "dbward_session_failures_total";
const CONNECTION_SETUP: &str = "dbward_connection_setup_seconds";
const PROVISIONING: &str = "dbward_provisioning_seconds";
const RECONCILER_ACTIONS: &str = "dbward_reconciler_actions_total";
const AUDIT_QUEUE_DEPTH: &str = "dbward_audit_queue_depth";
const AUDIT_SPOOLED: &str = "dbward_audit_spooled_events_total";
const AUDIT_SPOOL_BYTES: &str = "dbward_audit_spool_bytes";
const AUDIT_REFUSED: &str = "dbward_audit_refused_events_total";
const LOGINS: &str = "dbward_logins_total";
const RELAYED_BYTES: &str = "dbward_relayed_bytes_total";

/// Upper bounds (seconds) of the latency histograms: from a local activation (milliseconds) to
/// a teardown that waits for a busy backend (seconds).
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why a session failed, as counted: who has to act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was refused: certificate, roles, a name provisioning will not take.
    User,
    /// The client broke off or spoke the protocol wrongly before a session could start.
    Client,
    /// The database refused or failed.
    Database,
    /// dbward itself, its store or its configuration.
    Internal,
}

impl ErrorKind {
    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::User => "user",
            ErrorKind::Client => "client",
            ErrorKind::Database => "database",
            ErrorKind::Internal => "internal",
        }
    }

    /// The one mapping from session errors to kinds. No wildcard: a new variant must be
    /// decided on here.
    pub fn of(err: &SessionError) -> ErrorKind {
        match err {
            SessionError::AccessDenied(_)
            | SessionError::Provisioning(_)
            | SessionError::TooManyConnections(_) => ErrorKind::User,
            SessionError::Database { .. } | SessionError::MysqlServer { .. } => ErrorKind::Database,
            // The provisioning lock lives in dbward's store.
            SessionError::Busy(_) | SessionError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// The outcome of a password login, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    Succeeded,
    Failed,
    /// Refused before the password was checked: too many failures for (user, address).
    RateLimited,
    /// Refused before the password was checked: too many checks running.
    Busy,
}

impl LoginResult {
    fn as_str(self) -> &'static str {
        match self {
            LoginResult::Succeeded => "success",
            LoginResult::Failed => "failure",
            LoginResult::RateLimited => "rate_limited",
            LoginResult::Busy => "busy",
        }
    }
}

/// Which reconciler pass acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReconcilePass {
    /// A user left active with no session (periodic reconciler).
    Leftover,
    /// The user of a session whose gateway instance is gone (recovery).
    DeadInstance,
}

impl ReconcilePass {
    fn as_str(self) -> &'static str {
        match self {
            ReconcilePass::Leftover => "leftover",
            ReconcilePass::DeadInstance => "dead_instance",
        }
    }
}

/// Provisioning operations whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Activate,
    Teardown,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Activate => "activate",
            Operation::Teardown => "teardown",
        }
    }
}

tokio::task_local! {
    /// When the listener accepted the connection this task serves.
    static ACCEPTED_AT: Instant;
}

/// Runs one accepted connection's task, remembering when it was accepted so the setup
/// latency can be measured where the session starts.
pub(crate) fn connection<F: Future>(task: F) -> impl Future<Output = F::Output> {
    ACCEPTED_AT.scope(Instant::now(), task)
}

/// The metrics of one gateway; cheap to clone. Each gateway has its own registry (none is
/// installed process-wide), so several gateways in one process count apart.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Option<Arc<Registry>>,
}

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Metrics {
    /// A registry that records nothing: for a gateway without `metrics_listen_addr`.
    pub fn disabled() -> Metrics {
        Metrics { registry: None }
    }

    /// A recording registry with every metric described.
    pub fn enabled() -> Metrics {
        let builder = match PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS) {
            Ok(builder) => builder,
            Err(err) => {
                tracing::error!(%err, "metrics registry could not be built; metrics are off");
                return Metrics::disabled();
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let registry = Registry { recorder, handle };
        registry.describe();
        Metrics {
            registry: Some(Arc::new(registry)),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.registry.is_some()
    }

    /// Sessions started and active, from the audit events of session start and end. The
    /// setup latency is taken when the event is emitted from the connection's own task.
    pub(crate) fn audit_event(&self, event: &str, fields: &SessionFields, extra: &Value) {
        let Some(r) = &self.registry else {
            return;
        };
        let labels = session_labels(fields);
        match event {
            audit::SESSION_START if extra.get("success") == Some(&Value::Bool(true)) => {
                r.counter(SESSIONS_STARTED, labels.clone()).increment(1);
                r.gauge(SESSIONS_ACTIVE, labels.clone()).increment(1.0);
                if let Ok(accepted) = ACCEPTED_AT.try_with(|at| *at) {
                    r.histogram(CONNECTION_SETUP, labels)
                        .record(accepted.elapsed().as_secs_f64());
                }
            }
            audit::SESSION_END => r.gauge(SESSIONS_ACTIVE, labels).decrement(1.0),
            _ => {}
        }
    }

    /// A session refused or failed before it started.
    pub fn failed(&self, protocol: &str, err: &SessionError) {
        self.failure(protocol, ErrorKind::of(err));
    }

    /// A connection whose TLS or protocol handshake failed (before any session error).
    pub fn handshake_failed(&self, protocol: &str) {
        self.failure(protocol, ErrorKind::Client);
    }

    fn failure(&self, protocol: &str, kind: ErrorKind) {
        if let Some(r) = &self.registry {
            r.counter(
                SESSION_FAILURES,
                vec![
                    Label::new("protocol", protocol.to_string()),
                    Label::new("kind", kind.as_str()),
                ],
            )
            .increment(1);
        }
    }

    /// How long activating the session's database user took, from `started`.
    pub fn activated(&self, fields: &SessionFields, started: Instant) {
        self.provisioning(Operation::Activate, fields, started);
    }

    /// How long locking or dropping the session's database user took, from `started`.
    pub fn torn_down(&self, fields: &SessionFields, started: Instant) {
        self.provisioning(Operation::Teardown, fields, started);
    }

    fn provisioning(&self, operation: Operation, fields: &SessionFields, started: Instant) {
        if let Some(r) = &self.registry {
            r.histogram(
                PROVISIONING,
                vec![
                    Label::new("operation", operation.as_str()),
                    Label::new("protocol", fields.db_protocol.clone()),
                ],
            )
            .record(started.elapsed().as_secs_f64());
        }
    }

    /// Bytes a finished relay moved: client to database (`up`) and back (`down`).
    pub fn relayed(&self, fields: &SessionFields, up: u64, down: u64) {
        if let Some(r) = &self.registry {
            for (direction, bytes) in [("up", up), ("down", down)] {
                let mut labels = session_labels(fields);
                labels.push(Label::new("direction", direction));
                r.counter(RELAYED_BYTES, labels).increment(bytes);
            }
        }
    }

    /// A leftover user the reconciler tore down; `None` when that failed.
    pub fn reconciled_leftover(&self, outcome: Option<&DeactivateOutcome>) {
        self.reconciler_action(ReconcilePass::Leftover, outcome);
    }

    /// The user of a dead instance's session, torn down by recovery; `None` when that failed.
    pub fn recovered_dead_instance(&self, outcome: Option<&DeactivateOutcome>) {
        self.reconciler_action(ReconcilePass::DeadInstance, outcome);
    }

    fn reconciler_action(&self, pass: ReconcilePass, outcome: Option<&DeactivateOutcome>) {
        if let Some(r) = &self.registry {
            let outcome = match outcome {
                None => "failed",
                Some(DeactivateOutcome::Locked) => "locked",
                Some(DeactivateOutcome::Dropped) => "dropped",
                Some(DeactivateOutcome::DropFellBackToLock) => "drop_fell_back_to_lock",
                Some(DeactivateOutcome::Kept) => "kept",
                Some(DeactivateOutcome::Missing) => "missing",
            };
            r.counter(
                RECONCILER_ACTIONS,
                vec![
                    Label::new("pass", pass.as_str()),
                    Label::new("outcome", outcome),
                ],
            )
            .increment(1);
        }
    }

    /// A password login and how it ended.
    pub fn login(&self, result: LoginResult) {
        if let Some(r) = &self.registry {
            r.counter(LOGINS, vec![Label::new("result", result.as_str())])
                .increment(1);
        }
    }

    /// The text exposition of every metric, with the audit pipeline's state read now.
    pub fn render(&self, audit: &AuditLog) -> String {
        let Some(r) = &self.registry else {
            return String::new();
        };
        let state = audit.state();
        r.gauge(AUDIT_QUEUE_DEPTH, Vec::new())
            .set(state.queued as f64);
        r.gauge(AUDIT_SPOOL_BYTES, Vec::new())
            .set(state.spooled_bytes as f64);
        r.counter(AUDIT_SPOOLED, Vec::new())
            .absolute(state.spooled_events);
        r.counter(AUDIT_REFUSED, Vec::new())
            .absolute(state.refused_events);
        r.handle.render()
    }

    /// Folds recorded histogram samples into buckets; run every few seconds so that a
    /// gateway nobody scrapes keeps no growing list of samples.
    fn upkeep(&self) {
        if let Some(r) = &self.registry {
            r.handle.run_upkeep();
        }
    }
}

fn session_labels(fields: &SessionFields) -> Vec<Label> {
    vec![
        Label::new("db", fields.db_service.clone()),
        Label::new("protocol", fields.db_protocol.clone()),
    ]
}

impl Registry {
    const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

    fn describe(&self) {
        let counters = [
            (SESSIONS_STARTED, "Database sessions started (client connected to the database), by db resource and protocol.", None),
            (SESSION_FAILURES, "Database connections that failed before their session started, by protocol and error kind (user, client, database, internal).", None),
            (RECONCILER_ACTIONS, "Teardowns of leftover users attempted by the reconciler and by the recovery of dead instances' sessions, by outcome.", None),
            (AUDIT_SPOOLED, "Audit events written to the spool because the store was slow or failing.", None),
            (AUDIT_REFUSED, "Audit events that could be neither stored nor spooled (each refusal is logged).", None),
            (LOGINS, "Password logins, by result (success, failure, rate_limited, busy).", None),
            (RELAYED_BYTES, "Bytes relayed by finished sessions, by db resource, protocol and direction (up: client to database).", Some(Unit::Bytes)),
        ];
        for (name, help, unit) in counters {
            self.recorder
                .describe_counter(KeyName::from(name), unit, SharedString::from(help));
        }
        let gauges = [
            (
                SESSIONS_ACTIVE,
                "Database sessions started and not yet ended (relaying, or tearing down), by db resource and protocol.",
                None,
            ),
            (
                AUDIT_QUEUE_DEPTH,
                "Audit events queued in memory for the store.",
                None,
            ),
            (
                AUDIT_SPOOL_BYTES,
                "Bytes of audit events waiting in the spool for the store.",
                Some(Unit::Bytes),
            ),
        ];
        for (name, help, unit) in gauges {
            self.recorder
                .describe_gauge(KeyName::from(name), unit, SharedString::from(help));
        }
        let histograms = [
            (CONNECTION_SETUP, "Seconds from accepting a database connection to its session relaying (handshake, authorization, provisioning, upstream connect), by db resource and protocol."),
            (PROVISIONING, "Seconds the admin connection took to activate or tear down a provisioned database user, by operation and protocol."),
        ];
        for (name, help) in histograms {
            self.recorder.describe_histogram(
                KeyName::from(name),
                Some(Unit::Seconds),
                SharedString::from(help),
            );
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &Self::METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> metrics::Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &Self::METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> metrics::Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &Self::METADATA)
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`. Plain HTTP: bind it to an address
/// only the monitoring system reaches.
pub(crate) async fn serve(
    gw: Arc<crate::Gateway>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let upkeep = {
        let metrics = gw.metrics.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => metrics.upkeep(),
                }
            }
        }
    };
    tokio::spawn(upkeep);
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(gw);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(err) = served {
        tracing::error!(%err, "metrics listener stopped");
    }
}

async fn scrape(
    axum::extract::State(gw): axum::extract::State<Arc<crate::Gateway>>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.metrics.render(&gw.audit),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_error_has_a_kind() {
        let cases = [
            (SessionError::AccessDenied("x".into()), "user"),
            (SessionError::Provisioning("x".into()), "user"),
            (SessionError::Busy("x".into()), "internal"),
            (SessionError::TooManyConnections("x".into()), "user"),
            (
                SessionError::Database {
                    sqlstate: "28P01".into(),
                    message: "x".into(),
                    detail: None,
                },
                "database",
            ),
            (
                SessionError::MysqlServer {
                    code: 1045,
                    sqlstate: "28000".into(),
                    message: "x".into(),
                },
                "database",
            ),
            (SessionError::Internal("x".into()), "internal"),
        ];
        for (err, kind) in cases {
            assert_eq!(ErrorKind::of(&err).as_str(), kind, "{err:?}");
        }
    }

    fn fields(db: &str) -> SessionFields {
        SessionFields {
            db_service: db.into(),
            db_protocol: "postgres".into(),
            ..Default::default()
        }
    }

    /// The value of the sample whose line starts with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[tokio::test]
    async fn session_counts_follow_audit_events_and_gateways_count_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = dbward_store::Store::open_sqlite(dir.path()).unwrap();
        let audit = AuditLog::new(store, None, None);
        let m = Metrics::enabled();
        let other = Metrics::enabled();
        let ok = serde_json::json!({"success": true});
        let refused = serde_json::json!({"success": false, "error": "no"});
        m.audit_event(audit::SESSION_START, &fields("a"), &ok);
        m.audit_event(audit::SESSION_START, &fields("a"), &ok);
        m.audit_event(audit::SESSION_START, &fields("a"), &refused);
        m.audit_event(audit::SESSION_END, &fields("a"), &Value::Null);
        m.relayed(&fields("a"), 10, 20);
        m.failed("postgres", &SessionError::Internal("x".into()));
        m.login(LoginResult::RateLimited);
        let text = m.render(&audit);
        let started = r#"dbward_sessions_started_total{db="a",protocol="postgres"}"#;
        assert_eq!(sample(&text, started), Some(2.0), "{text}");
        let active = r#"dbward_sessions_active{db="a",protocol="postgres"}"#;
        assert_eq!(sample(&text, active), Some(1.0), "{text}");
        let up = r#"dbward_relayed_bytes_total{db="a",protocol="postgres",direction="up"}"#;
        assert_eq!(sample(&text, up), Some(10.0), "{text}");
        let failed = r#"dbward_session_failures_total{protocol="postgres",kind="internal"}"#;
        assert_eq!(sample(&text, failed), Some(1.0), "{text}");
        let limited = r#"dbward_logins_total{result="rate_limited"}"#;
        assert_eq!(sample(&text, limited), Some(1.0), "{text}");
        assert_eq!(sample(&text, "dbward_audit_queue_depth"), Some(0.0));
        assert!(
            text.contains("# HELP dbward_sessions_started_total"),
            "{text}"
        );
        assert!(text.contains("# TYPE dbward_sessions_started_total counter"));
        // Another gateway in the same process has its own registry.
        assert_eq!(sample(&other.render(&audit), started), None);
        // A disabled registry renders nothing and records nothing.
        let off = Metrics::disabled();
        off.audit_event(audit::SESSION_START, &fields("a"), &ok);
        assert_eq!(off.render(&audit), "");
    }
}
