//! The PostgreSQL listener: one task per client connection, walking the session pipeline.
//!
//! Protocol details (SSLRequest, direct TLS, startup, relay, cancel) live in
//! `dbward_proxy::pg`; this file decides what happens, in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dbward_model::Protocol;
use dbward_proxy::pg::{self, Accepted, TapEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::live::CancelTarget;
use super::{authenticate, authorize, lifecycle, provision, Authorized, Requested, SessionError};
use crate::Gateway;

type ClientStream = pg::ClientTlsStream<TcpStream>;

/// How long connecting to the database (TCP, TLS, startup) may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let gate = gw.pending.clone();
    crate::listen::accept_loop(
        listener,
        gate,
        shutdown,
        "postgres",
        move |tcp, peer, pending| handle(gw.clone(), tcp, peer, tls.clone(), pending),
    )
    .await;
}

async fn handle(
    gw: Arc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    pending: crate::listen::Pending,
) {
    let limits = pg::HandshakeLimits {
        timeout: gw.config.limits.handshake_timeout,
        ..pg::HandshakeLimits::default()
    };
    let accepted = pg::accept(tcp, tls, limits).await;
    drop(pending);
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(err) => {
            tracing::info!(%peer, %err, "postgres handshake failed");
            gw.metrics.handshake_failed("postgres");
            return;
        }
    };
    match accepted {
        Accepted::Cancel(key) => forward_cancel(&gw, key).await,
        Accepted::Startup(startup) => {
            let pg::ClientStartup {
                mut stream,
                params,
                client_certs,
                ..
            } = *startup;
            let auth = match authenticate(&gw, peer, &client_certs) {
                Ok(auth) => auth,
                Err(err) => {
                    gw.metrics.failed("postgres", &err);
                    let _ = pg::send_error(&mut stream, err.sqlstate(), &err.user_message()).await;
                    return;
                }
            };
            let param = |key: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            let requested = Requested {
                db_user: param("user"),
                db_name: param("database"),
            };
            let username = auth.identity.username.clone();
            let route = auth.route.clone();
            let authorized = match authorize(&gw, auth, Protocol::Postgres, requested).await {
                Ok(a) => a,
                Err(err) => {
                    lifecycle::refused_unauthorized(
                        &gw,
                        username,
                        &route,
                        "postgres",
                        param("user"),
                        param("database"),
                        &err,
                    )
                    .await;
                    let _ = pg::send_error(&mut stream, err.sqlstate(), &err.user_message()).await;
                    return;
                }
            };
            run_session(gw, stream, params, authorized).await;
        }
    }
}

async fn forward_cancel(gw: &Gateway, key: pg::BackendKey) {
    let Some(target) = gw.sessions.cancel_target(key) else {
        tracing::debug!("cancel request for an unknown key ignored");
        return;
    };
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        pg::cancel::send_cancel(target.addr.as_str(), target.tls.clone(), target.key),
    )
    .await;
    if let Ok(Err(err)) = sent {
        tracing::info!(%err, "cancel request could not be forwarded");
    }
}

async fn run_session(
    gw: Arc<Gateway>,
    mut client: ClientStream,
    params: Vec<(String, String)>,
    mut authorized: Authorized,
) {
    let sid = authorized.fields.sid.clone();
    // Registered before provisioning so the reconciler never mistakes this user for a
    // leftover while it is being activated.
    let registration = gw.sessions.register(Arc::new(authorized.clone()));
    let provisioned = provision(&gw, &mut authorized).await;
    let mut provisioned = match provisioned {
        Ok(p) => p,
        Err(err) => {
            fail_start(&gw, &mut client, &authorized, err).await;
            return;
        }
    };

    let upstream = async {
        let target = gw
            .upstream
            .target(&gw.cas, &authorized.db, &provisioned.db_user)?;
        let mut upstream_params: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .cloned()
            .collect();
        upstream_params.push(("user".into(), provisioned.db_user.clone()));
        upstream_params.push(("database".into(), authorized.decision.db_name.clone()));
        let connecting = pg::upstream::connect(
            target.addr.as_str(),
            target.tls.clone(),
            target.server_name.clone(),
            &upstream_params,
        );
        let connected = tokio::time::timeout(UPSTREAM_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                SessionError::Internal(format!("connecting to {} timed out", target.addr))
            })?
            .map_err(|err| match err {
                dbward_proxy::UpstreamError::Server {
                    sqlstate, message, ..
                } => SessionError::Database { sqlstate, message },
                other => SessionError::Internal(format!("connecting to {}: {other}", target.addr)),
            })?;
        Ok::<_, SessionError>((target, connected))
    }
    .await;
    let (target, server) = match upstream {
        Ok(pair) => pair,
        Err(err) => {
            provisioned.connected().await;
            fail_start(&gw, &mut client, &authorized, err).await;
            lifecycle::abandon(&gw, registration, provisioned, &authorized).await;
            return;
        }
    };
    provisioned.connected().await;
    let backend_pid = server.backend_key.map(|key| i64::from(key.process_id));
    provisioned.record_live(&gw, &authorized, backend_pid).await;

    let gateway_key = match server.backend_key {
        Some(key) => gw.sessions.add_cancel_key(
            &sid,
            CancelTarget {
                addr: target.addr.clone(),
                tls: Some((target.tls.clone(), target.server_name.clone())),
                key,
            },
        ),
        None => pg::random_backend_key(),
    };
    if let Err(err) = pg::write_startup_reply(&mut client, &server.parameters, gateway_key).await {
        tracing::info!(%sid, %err, "client left during startup");
        drop(server);
        lifecycle::abandon(&gw, registration, provisioned, &authorized).await;
        return;
    }
    lifecycle::started(&gw, &authorized).await;
    let audit_query = lifecycle::query_audit(&gw, &authorized.fields);
    let terminated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tap = {
        let terminated = terminated.clone();
        move |event: TapEvent<'_>| match event {
            TapEvent::Query { sql, .. } | TapEvent::Parse { sql, .. } => {
                audit_query(sql);
            }
            // No SQL text: recorded by the function's OID (`pg_proc.oid`).
            TapEvent::FunctionCall { oid } => audit_query(&format!("FunctionCall oid {oid}")),
            TapEvent::Terminate => terminated.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    };
    let end = registration.end.clone();
    let mut server_stream = server.stream;
    let backend_key = server.backend_key;
    tokio::select! {
        stats = pg::relay(&mut client, &mut server_stream, tap) => {
            gw.metrics.relayed(&authorized.fields, stats.client_to_server, stats.server_to_client);
            tracing::debug!(%sid, up = stats.client_to_server, down = stats.server_to_client, end = ?stats.end, "relay finished");
        }
        _ = end.cancelled() => {
            tracing::info!(%sid, "session ended by the gateway");
        }
    }
    // Both sockets are closed before teardown starts.
    drop(server_stream);
    drop(client);
    // A client that vanished without Terminate (killed, network gone, session ended by the
    // gateway) may leave its backend busy in a long statement, which keeps the user "live"
    // and would stall teardown: cancel whatever it runs so the backend notices and exits.
    if !terminated.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(key) = backend_key {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                pg::cancel::send_cancel(
                    target.addr.as_str(),
                    Some((target.tls.clone(), target.server_name.clone())),
                    key,
                ),
            )
            .await;
        }
    }
    if let Some(key) = backend_key {
        end_backend(&gw, &authorized, &provisioned.db_user, key.process_id).await;
    }
    lifecycle::finish(&gw, registration, provisioned, &authorized).await;
}

/// Ends the session's backend for good. A cancel is not enough: a statement may swallow it
/// (a PL/pgSQL handler for `query_canceled`), and a Terminate the client pipelined behind a
/// statement is read only once that statement ends; either way the backend would go on
/// running with the user's roles, and keep the user active, after the session ended.
/// Only for provisioned users: the admin terminates nothing but a backend of the managed
/// user this session used.
async fn end_backend(gw: &Gateway, authorized: &Authorized, db_user: &str, pid: i32) {
    if authorized.decision.mode == dbward_rbac::ProvisioningMode::Off {
        return;
    }
    let Ok(admin) =
        super::provisioning::admin_target(gw, &authorized.db, &authorized.decision.db_name)
    else {
        return;
    };
    let user = dbward_provision::DbUserName::new(db_user.to_owned());
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        gw.pg_provisioner.terminate_backend(&admin, &user, pid),
    )
    .await;
    match ended {
        Ok(Ok(true)) => {
            tracing::info!(sid = %authorized.fields.sid, pid, "backend outlived its session; terminated")
        }
        Ok(Ok(false)) => {}
        Ok(Err(err)) => {
            tracing::warn!(sid = %authorized.fields.sid, pid, %err, "could not terminate the backend of an ended session")
        }
        Err(_) => {
            tracing::warn!(sid = %authorized.fields.sid, pid, "terminating the backend of an ended session timed out")
        }
    }
}

async fn fail_start(
    gw: &Gateway,
    client: &mut ClientStream,
    authorized: &Authorized,
    err: SessionError,
) {
    lifecycle::refused(gw, authorized, &err).await;
    let _ = pg::send_error(client, err.sqlstate(), &err.user_message()).await;
}
