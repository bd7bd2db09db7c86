//! The dbward gateway: wires the store, the certificate authorities, access control,
//! provisioning and the protocol listeners into one running process.
//!
//! Follow one database connection from `session::postgres::serve` (listener) through
//! `session` (the pipeline shared by every engine) to teardown. Protocol details live in
//! `dbward-proxy`, database SQL in `dbward-provision`, decisions in `dbward-rbac`.

pub mod api;
pub mod audit;
pub mod bootstrap;
pub mod catalog;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod listen;
pub mod metrics;
pub mod mfa;
pub mod passwords;
pub mod session;
pub mod sso;
pub mod trust;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dbward_model::Config;
use dbward_pki::{CaSet, ClientAuth, TrustedRoots};
use dbward_store::Store;
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

pub use bootstrap::{AdminFiles, Endpoints};
pub use error::GatewayError;

/// Everything a running gateway shares between its listeners and connections.
pub struct Gateway {
    pub config: Config,
    pub cluster: String,
    pub instance_id: String,
    pub store: Store,
    pub cas: CaSet,
    pub catalog: catalog::Catalog,
    pub audit: audit::AuditLog,
    /// Prometheus metrics; records nothing when `metrics_listen_addr` is off.
    pub metrics: metrics::Metrics,
    pub limiter: passwords::LoginLimiter,
    /// Single sign-on logins in progress and the providers they use.
    pub sso: sso::Sso,
    /// Pending (not yet authenticated) connections of all listeners.
    pub pending: Arc<listen::PendingGate>,
    pub endpoints: RwLock<Endpoints>,
    pub sessions: session::LiveSessions,
    pub upstream: session::UpstreamCredentials,
    /// Admin connections and provisioning, for every engine.
    pub provisioners: dbward_provision::Provisioners,
    /// The version the last MySQL/MariaDB server reported, repeated in the gateway's greeting.
    pub mysql_version: std::sync::RwLock<String>,
    /// The root clusters whose users the listeners accept (trusted clusters), kept in step
    /// with the store by `trust::refresh_listeners`.
    pub trust: TrustedRoots,
}

/// The cluster name: configured, else the host name.
pub fn cluster_name(config: &Config) -> String {
    if let Some(name) = config.cluster_name.as_ref().filter(|n| !n.is_empty()) {
        return name.clone();
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "dbward".to_string())
}

/// Opens the configured store (creating `data_dir` when needed).
pub async fn open_store(config: &Config) -> Result<Store, GatewayError> {
    match config.storage.backend {
        dbward_model::StorageBackend::Sqlite => Ok(Store::open_sqlite(&config.data_dir)?),
        dbward_model::StorageBackend::Postgres => {
            let dsn = config.storage.dsn.as_deref().ok_or_else(|| {
                GatewayError::Config(
                    "storage.dsn is required with storage.backend: postgres".into(),
                )
            })?;
            // Connecting blocks (it runs migrations); keep it off the async workers.
            let dsn = dsn.to_string();
            tokio::task::spawn_blocking(move || Store::open_postgres(&dsn))
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?
                .map_err(GatewayError::from)
        }
    }
}

/// A gateway whose listeners are bound; `run` serves until `shutdown` is cancelled.
pub struct Started {
    pub gateway: Arc<Gateway>,
    web: TcpListener,
    postgres: Option<TcpListener>,
    mysql: Option<TcpListener>,
    metrics: Option<TcpListener>,
    web_tls: Arc<rustls::ServerConfig>,
    db_tls: Arc<rustls::ServerConfig>,
    mysql_tls: Arc<rustls::ServerConfig>,
}

impl Started {
    pub async fn bind(config: Config) -> Result<Started, GatewayError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = open_store(&config).await?;
        let cluster = cluster_name(&config);
        let cas = bootstrap::load_or_create_cas(&store, &cluster).await?;
        bootstrap::write_admin_identity(&config.data_dir, &cas, &cluster)?;

        let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if !hosts.contains(&config.public_addr) {
            hosts.insert(0, config.public_addr.clone());
        }
        let (host_cert, host_key) =
            dbward_pki::issue_host_cert(&cas.host, &hosts, Duration::from_secs(365 * 24 * 3600))?;
        let user_ca = cas.user.cert_der()?;
        // Certificates of another CA or cluster, or out of date, fail the handshake.
        // Users of trusted root clusters too, each with its own CA and cluster name.
        let trust = TrustedRoots::default();
        let user_cert = |required| ClientAuth::UserCertTrusting {
            ca: user_ca.clone(),
            cluster: cluster.clone(),
            required,
            trusted: trust.clone(),
        };
        let web_tls = dbward_pki::server_config(
            &host_cert,
            &host_key,
            user_cert(false),
            &[b"h2", b"http/1.1"],
        )?;
        let db_tls =
            dbward_pki::server_config(&host_cert, &host_key, user_cert(true), &[b"postgresql"])?;
        let mysql_tls = dbward_pki::server_config(&host_cert, &host_key, user_cert(true), &[])?;

        let web = listen::bind(&config.web_listen_addr)
            .await
            .map_err(|e| bind_error("web_listen_addr", &config.web_listen_addr, e))?;
        let postgres = match config.postgres_listen_addr.as_deref() {
            Some(addr) if !addr.is_empty() => Some(
                listen::bind(addr)
                    .await
                    .map_err(|e| bind_error("postgres_listen_addr", addr, e))?,
            ),
            _ => None,
        };
        let mysql = match config.mysql_listen_addr.as_deref() {
            Some(addr) if !addr.is_empty() => Some(
                listen::bind(addr)
                    .await
                    .map_err(|e| bind_error("mysql_listen_addr", addr, e))?,
            ),
            _ => None,
        };
        let metrics = match config.metrics_listen_addr.as_deref() {
            Some(addr) if !addr.is_empty() => Some(
                listen::bind(addr)
                    .await
                    .map_err(|e| bind_error("metrics_listen_addr", addr, e))?,
            ),
            _ => None,
        };
        let endpoints = Endpoints {
            web: web.local_addr()?.to_string(),
            postgres: postgres
                .as_ref()
                .map(|l| l.local_addr().map(|a| a.to_string()))
                .transpose()?,
            mysql: mysql
                .as_ref()
                .map(|l| l.local_addr().map(|a| a.to_string()))
                .transpose()?,
            metrics: metrics
                .as_ref()
                .map(|l| l.local_addr().map(|a| a.to_string()))
                .transpose()?,
            pid: std::process::id(),
        };
        bootstrap::write_endpoints(&config.data_dir, &endpoints)?;

        let static_dbs = config.static_dbs()?;
        let audit_file: Option<PathBuf> = config.audit_file.clone();
        let gateway_metrics = if metrics.is_some() {
            metrics::Metrics::enabled()
        } else {
            metrics::Metrics::disabled()
        };
        let gateway = Arc::new(Gateway {
            catalog: catalog::Catalog::new(store.clone(), static_dbs),
            audit: {
                let log = audit::AuditLog::new(
                    store.clone(),
                    audit_file,
                    Some(config.data_dir.join(audit::SPOOL_DIR)),
                )
                .with_metrics(gateway_metrics.clone());
                if config.audit_queries {
                    log
                } else {
                    tracing::warn!("audit_queries is false: client statements are not audited");
                    log.without_queries()
                }
            },
            metrics: gateway_metrics,
            limiter: passwords::LoginLimiter::new(
                passwords::LoginPolicy::default(),
                config.limits.max_concurrent_logins,
            ),
            sso: sso::Sso::new(&cas.user.key_pem, &cluster),
            pending: listen::PendingGate::new(&config.limits),
            endpoints: RwLock::new(endpoints),
            sessions: session::LiveSessions::default(),
            upstream: session::UpstreamCredentials::default(),
            provisioners: dbward_provision::Provisioners::default(),
            mysql_version: std::sync::RwLock::new(
                session::mysql::DEFAULT_SERVER_VERSION.to_string(),
            ),
            instance_id: uuid::Uuid::new_v4().to_string(),
            trust,
            cluster,
            cas,
            store,
            config,
        });
        trust::refresh_listeners(&gateway).await;
        // Alive in the store before any session can be recorded, so no other instance takes
        // this one's first sessions for a dead instance's.
        if let Err(err) = gateway.store.heartbeat_instance(&gateway.instance_id).await {
            tracing::warn!(%err, "heartbeat could not be stored");
        }
        Ok(Started {
            gateway,
            web,
            postgres,
            mysql,
            metrics,
            web_tls,
            db_tls,
            mysql_tls,
        })
    }

    pub fn web_addr(&self) -> std::io::Result<SocketAddr> {
        self.web.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then waits (bounded) for live sessions to tear down.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let gw = self.gateway.clone();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(web::serve(
            gw.clone(),
            self.web,
            self.web_tls,
            shutdown.clone(),
        ));
        if let Some(pg) = self.postgres {
            tasks.spawn(session::postgres::serve(
                gw.clone(),
                pg,
                self.db_tls.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(my) = self.mysql {
            tasks.spawn(session::mysql::serve(
                gw.clone(),
                my,
                self.mysql_tls.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = self.metrics {
            tasks.spawn(metrics::serve(gw.clone(), listener, shutdown.clone()));
        }
        tasks.spawn(session::watch_revocations(gw.clone(), shutdown.clone()));
        tasks.spawn(session::reconcile_loop(gw.clone(), shutdown.clone()));
        tasks.spawn(session::watch_cancel_requests(gw.clone(), shutdown.clone()));
        tasks.spawn(trust::refresh_loop(gw.clone(), shutdown.clone()));
        let endpoints = gw.endpoints.read().await.clone();
        tracing::info!(
            cluster = %gw.cluster,
            web = %endpoints.web,
            postgres = ?endpoints.postgres,
            mysql = ?endpoints.mysql,
            metrics = ?endpoints.metrics,
            "dbward gateway started"
        );
        shutdown.cancelled().await;
        tracing::info!("shutting down: no new connections, ending live sessions");
        gw.sessions.end_all();
        gw.sessions.wait_until_empty(Duration::from_secs(20)).await;
        // Events are stored in batches: the last ones must not be lost on exit.
        gw.audit.flush().await;
        tasks.abort_all();
        Ok(())
    }
}

fn bind_error(key: &str, addr: &str, err: std::io::Error) -> GatewayError {
    GatewayError::Config(format!("{key}: cannot listen on {addr}: {err}"))
}

/// Cancels `token` on SIGINT (Ctrl-C) or SIGTERM.
pub fn stop_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

/// `dbward start`: binds the listeners and serves until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), GatewayError> {
    let started = Started::bind(config).await?;
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone());
    started.run(shutdown).await
}
