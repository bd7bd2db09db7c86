//! The MySQL/MariaDB listener: one task per client connection, walking the same session
//! pipeline as PostgreSQL. Protocol details (greeting, TLS upgrade, handshake response,
//! relay) live in `dbward_proxy::mysql`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dbward_model::Protocol;
use dbward_proxy::mysql::{self, Greeting, MysqlTap, UpstreamLogin};
use dbward_proxy::pg::HandshakeLimits;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{authenticate, authorize, lifecycle, provision, Authorized, Requested, SessionError};
use crate::Gateway;

type ClientStream = mysql::MysqlClientStream<TcpStream>;

/// What the greeting says before the gateway has seen a real server: a MariaDB, as MariaDB
/// presents itself to MySQL-protocol clients.
pub const DEFAULT_SERVER_VERSION: &str = "5.5.5-10.11.0-MariaDB-dbward";

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let next_id = std::sync::atomic::AtomicU32::new(1);
    let gate = gw.pending.clone();
    crate::listen::accept_loop(
        listener,
        gate,
        shutdown,
        "mysql",
        move |tcp, peer, pending| {
            let connection_id = next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .max(1);
            handle(gw.clone(), tcp, peer, tls.clone(), connection_id, pending)
        },
    )
    .await;
}

async fn handle(
    gw: Arc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    connection_id: u32,
    pending: crate::listen::Pending,
) {
    let server_version = gw
        .mysql_version
        .read()
        .map(|v| v.clone())
        .unwrap_or_else(|_| DEFAULT_SERVER_VERSION.to_string());
    let greeting = Greeting {
        server_version,
        connection_id,
    };
    let limits = HandshakeLimits {
        timeout: gw.config.limits.handshake_timeout,
        ..HandshakeLimits::default()
    };
    let client = mysql::accept(tcp, tls, greeting, limits).await;
    drop(pending);
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            tracing::info!(%peer, %err, "mysql handshake failed");
            gw.metrics.handshake_failed("mysql");
            return;
        }
    };
    let mysql::MysqlClient {
        mut stream,
        user,
        database,
        capabilities,
        client_certs,
        charset,
        sequence_id,
        ..
    } = client;
    let auth = match authenticate(&gw, peer, &client_certs) {
        Ok(auth) => auth,
        Err(err) => {
            gw.metrics.failed("mysql", &err);
            send_error(&mut stream, sequence_id, &err).await;
            return;
        }
    };
    let username = auth.identity.username.clone();
    let route = auth.route.clone();
    let requested = Requested {
        db_user: &user,
        db_name: database.as_deref().unwrap_or(""),
    };
    let authorized = match authorize(&gw, auth, Protocol::Mysql, requested).await {
        Ok(a) => a,
        Err(err) => {
            lifecycle::refused_unauthorized(
                &gw,
                username,
                &route,
                "mysql",
                &user,
                database.as_deref().unwrap_or(""),
                &err,
            )
            .await;
            send_error(&mut stream, sequence_id, &err).await;
            return;
        }
    };
    let session = Handshaken {
        stream,
        capabilities,
        charset,
        sequence_id,
    };
    run_session(gw, session, authorized).await;
}

/// The client after its handshake response, waiting for OK or ERR.
struct Handshaken {
    stream: ClientStream,
    capabilities: u32,
    charset: u8,
    sequence_id: u8,
}

async fn run_session(gw: Arc<Gateway>, mut client: Handshaken, mut authorized: Authorized) {
    let sid = authorized.fields.sid.clone();
    let registration = gw.sessions.register(Arc::new(authorized.clone()));
    let mut provisioned = match provision(&gw, &mut authorized).await {
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
        let database = Some(authorized.decision.db_name.as_str()).filter(|d| !d.is_empty());
        let login = UpstreamLogin {
            user: &provisioned.db_user,
            database,
            client_capabilities: client.capabilities,
            charset: client.charset,
        };
        let connecting = mysql::upstream::connect(
            target.addr.as_str(),
            target.tls.clone(),
            target.server_name.clone(),
            &login,
        );
        let connected = tokio::time::timeout(UPSTREAM_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                SessionError::Internal(format!("connecting to {} timed out", target.addr))
            })?
            .map_err(|err| match err {
                dbward_proxy::UpstreamError::MysqlServer {
                    code,
                    sqlstate,
                    message,
                    ..
                } => SessionError::MysqlServer {
                    code,
                    sqlstate,
                    message,
                },
                other => SessionError::Internal(format!("connecting to {}: {other}", target.addr)),
            })?;
        Ok::<_, SessionError>(connected)
    }
    .await;
    let server = match upstream {
        Ok(server) => server,
        Err(err) => {
            provisioned.connected().await;
            fail_start(&gw, &mut client, &authorized, err).await;
            lifecycle::abandon(&gw, registration, provisioned, &authorized).await;
            return;
        }
    };
    provisioned.connected().await;
    let connection_id = Some(i64::from(server.connection_id));
    provisioned
        .record_live(&gw, &authorized, connection_id)
        .await;
    if let Ok(mut version) = gw.mysql_version.write() {
        if *version != server.server_version {
            *version = server.server_version.clone();
        }
    }
    if let Err(err) =
        mysql::send_ok(&mut client.stream, client.sequence_id, server.capabilities).await
    {
        tracing::info!(%sid, %err, "client left during the handshake");
        drop(server);
        lifecycle::abandon(&gw, registration, provisioned, &authorized).await;
        return;
    }
    lifecycle::started(&gw, &authorized).await;
    let audit_query = lifecycle::query_audit(&gw, &authorized.fields);
    let refusals = (gw.clone(), authorized.fields.clone());
    let tap = move |event: MysqlTap<'_>| match event {
        MysqlTap::Query { sql, .. } | MysqlTap::Prepare { sql, .. } => {
            audit_query(sql);
        }
        MysqlTap::Quit => {}
        MysqlTap::Refused { command } => {
            // Answered with an ERR by the relay, never forwarded; recorded as the query it was.
            tracing::warn!(sid = %refusals.1.sid, command, "client command refused");
            let (gw, fields) = refusals.clone();
            tokio::spawn(async move {
                let extra = serde_json::json!({
                    "db_query": command,
                    "success": false,
                    "error": mysql::relay::refused_message(command),
                });
                gw.audit
                    .emit(crate::audit::SESSION_QUERY, &fields, extra)
                    .await;
            });
        }
    };
    let end = registration.end.clone();
    let connection_id = server.connection_id;
    let mut server_stream = server.stream;
    let mut client_stream = client.stream;
    tokio::select! {
        stats = mysql::relay(&mut client_stream, &mut server_stream, tap) => {
            gw.metrics.relayed(&authorized.fields, stats.client_to_server, stats.server_to_client);
            tracing::debug!(%sid, up = stats.client_to_server, down = stats.server_to_client, end = ?stats.end, "relay finished");
        }
        _ = end.cancelled() => {
            tracing::info!(%sid, "session ended by the gateway");
        }
    }
    drop(server_stream);
    drop(client_stream);
    end_connection(&gw, &authorized, &provisioned.db_user, connection_id).await;
    lifecycle::finish(&gw, registration, provisioned, &authorized).await;
}

/// Ends the session's server connection for good. MariaDB notices a closed socket only when
/// the running statement looks at it (`SLEEP` does, `BENCHMARK` and most work do not), so a
/// busy connection would go on with the user's roles, and keep the user active, after the
/// session ended. Only for provisioned users: the admin kills nothing but a connection of
/// the user this session used, and needs `CONNECTION ADMIN` for it.
async fn end_connection(gw: &Gateway, authorized: &Authorized, db_user: &str, id: u32) {
    if authorized.decision.mode == dbward_rbac::ProvisioningMode::Off {
        return;
    }
    let Ok(super::provisioning::EngineAdmin::Mysql(admin)) =
        super::provisioning::engine_admin(gw, &authorized.db)
    else {
        return;
    };
    let user = dbward_provision::DbUserName::new(db_user.to_owned());
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        gw.maria_provisioner
            .kill_connection(&admin, &user, u64::from(id)),
    )
    .await;
    let sid = &authorized.fields.sid;
    match ended {
        Ok(Ok(true)) => tracing::info!(%sid, id, "connection outlived its session; killed"),
        Ok(Ok(false)) => {}
        Ok(Err(err)) => {
            tracing::warn!(%sid, id, %err, "could not kill the connection of an ended session")
        }
        Err(_) => tracing::warn!(%sid, id, "killing the connection of an ended session timed out"),
    }
}

async fn send_error(stream: &mut ClientStream, seq: u8, err: &SessionError) {
    let (code, sqlstate) = err.mysql_code();
    let _ = mysql::send_err(stream, seq, code, sqlstate, &err.user_message()).await;
}

async fn fail_start(
    gw: &Gateway,
    client: &mut Handshaken,
    authorized: &Authorized,
    err: SessionError,
) {
    lifecycle::refused(gw, authorized, &err).await;
    send_error(&mut client.stream, client.sequence_id, &err).await;
}
