//! One connection from accept to teardown, the same for every engine: the order of the
//! steps, and what happens when one fails. Each step is a module of its own (see the table
//! in the `session` module); the engine supplies only its protocol ([`Engine`]).
//!
//! A step that fails before provisioning tells the client and ends the connection; from
//! provisioning on, a [`Teardown`] owns what must be undone and every way out goes through it.

use std::net::SocketAddr;
use std::sync::Arc;

use dbward_model::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

use super::connect::connect;
use super::engine::{Engine, Hello, Opening};
use super::relay::relay;
use super::teardown::{Ended, Teardown};
use super::{
    activate_db_user, authenticate, authorize, lifecycle, limits, permissions, plan_db_user,
    Authenticated, Authorized, Requested, SessionError,
};
use crate::listen::Pending;
use crate::Gateway;

/// Accepts the engine's connections until `shutdown`, one task each.
pub(crate) async fn serve<E: Engine>(
    gw: Arc<Gateway>,
    engine: E,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let engine = Arc::new(engine);
    let gate = gw.pending.clone();
    crate::listen::accept_loop(
        listener,
        gate,
        shutdown,
        E::PROTOCOL.as_str(),
        move |tcp, peer, pending| {
            let sid = uuid::Uuid::new_v4().to_string();
            let span = session_span(E::PROTOCOL, &sid, peer);
            accept(gw.clone(), engine.clone(), tcp, peer, pending, sid).instrument(span)
        },
    )
    .await;
}

/// The span a connection runs in: every log line of the session carries its id, the
/// client's address and, once the client is authenticated, the dbward user and the
/// database resource.
fn session_span(protocol: Protocol, sid: &str, peer: SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "session",
        %sid,
        %peer,
        %protocol,
        user = Empty,
        db = Empty,
    )
}

/// Adds who the client is to its session's span.
fn identify(span: &tracing::Span, auth: &Authenticated) {
    span.record("user", tracing::field::display(&auth.identity.username));
    span.record("db", tracing::field::display(&auth.route.service));
}

/// Accept, authenticate, authorize: nothing is provisioned yet, so a refusal only tells the
/// client (and the audit, once the client is known).
async fn accept<E: Engine>(
    gw: Arc<Gateway>,
    engine: Arc<E>,
    tcp: TcpStream,
    peer: SocketAddr,
    pending: Pending,
    sid: String,
) {
    let opening = engine.accept(&gw, tcp).await;
    // The handshake is over: the connection no longer counts against the pending caps.
    drop(pending);
    let hello = match opening {
        Ok(Opening::Session(hello)) => hello,
        Ok(Opening::Request(request)) => return engine.serve_request(&gw, request).await,
        Err(err) => {
            tracing::info!(%err, "handshake failed");
            gw.metrics.handshake_failed(E::PROTOCOL.as_str());
            return;
        }
    };
    let Hello {
        mut client,
        client_certs,
        db_user,
        db_name,
    } = hello;
    let auth = match authenticate(&gw, &sid, peer, &client_certs).await {
        Ok(auth) => auth,
        Err(err) => {
            gw.metrics.failed(E::PROTOCOL.as_str(), &err);
            return E::send_error(&mut client, &err).await;
        }
    };
    identify(&tracing::Span::current(), &auth);
    let authenticated = auth.clone();
    let requested = Requested {
        db_user: &db_user,
        db_name: &db_name,
    };
    let authorized = match authorize(&gw, auth, E::PROTOCOL, requested).await {
        Ok(authorized) => authorized,
        Err(err) => {
            lifecycle::refused_unauthorized(
                &gw,
                &authenticated,
                E::PROTOCOL,
                &db_user,
                &db_name,
                &err,
            )
            .await;
            return E::send_error(&mut client, &err).await;
        }
    };
    run_session(gw, &*engine, client, authorized).await;
}

/// Provision, connect, relay, tear down.
async fn run_session<E: Engine>(
    gw: Arc<Gateway>,
    engine: &E,
    mut client: E::Client,
    mut authorized: Authorized,
) {
    // The database user's final name first, so the session is registered with it.
    let planned = match plan_db_user(&gw, &mut authorized).await {
        Ok(planned) => planned,
        Err(err) => return refuse::<E>(&gw, &mut client, &authorized, err).await,
    };
    // The user's max_connections, counted across gateways; held until the teardown is over.
    let _slot = match limits::take_slot(&gw, &authorized, &planned.db_user).await {
        Ok(slot) => slot,
        Err(err) => return refuse::<E>(&gw, &mut client, &authorized, err).await,
    };
    // Registered before activation so the reconciler never mistakes this user for a
    // leftover while it is being activated.
    let registration = gw.sessions.register(Arc::new(authorized.clone()));
    let provisioned = match activate_db_user(&gw, &authorized, planned).await {
        Ok(provisioned) => provisioned,
        Err(err) => return refuse::<E>(&gw, &mut client, &authorized, err).await,
    };
    let mut teardown = Teardown::new(gw.clone(), registration, provisioned, authorized);
    // Table permissions (db_permissions) under the user's lock, still held; a session that
    // cannot get them does not start, and the guard tears the user down.
    let applied = {
        let (authorized, provisioned) = teardown.provisioned();
        permissions::apply(&gw, authorized, &provisioned.db_user).await
    };
    if let Err(err) = applied {
        refuse::<E>(&gw, &mut client, teardown.authorized(), err).await;
        teardown.finish(Ended::NeverStarted).await;
        return;
    }
    let ended = connect_and_relay(&gw, engine, client, &mut teardown).await;
    teardown.finish(ended).await;
}

/// Steps 4 and 5, which own the client's and the server's connections: however this returns,
/// both are closed before teardown starts.
async fn connect_and_relay<E: Engine>(
    gw: &Arc<Gateway>,
    engine: &E,
    mut client: E::Client,
    teardown: &mut Teardown,
) -> Ended {
    let (authorized, provisioned) = teardown.provisioned();
    let connected = match connect(gw, engine, &client, authorized, provisioned).await {
        Ok(connected) => connected,
        Err(err) => {
            refuse::<E>(gw, &mut client, teardown.authorized(), err).await;
            return Ended::NeverStarted;
        }
    };
    if let Err(err) = E::send_ready(&mut client, &connected.upstream, connected.cancel_key).await {
        tracing::info!(%err, "client left during startup");
        return Ended::NeverStarted;
    }
    lifecycle::started(gw, teardown.authorized()).await;
    relay(
        gw,
        client,
        connected,
        teardown.authorized(),
        teardown.end_token(),
    )
    .await
}

/// A session refused after authorization: recorded, then the client is told.
async fn refuse<E: Engine>(
    gw: &Gateway,
    client: &mut E::Client,
    authorized: &Authorized,
    err: SessionError,
) {
    lifecycle::refused(gw, authorized, &err).await;
    E::send_error(client, &err).await;
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use dbward_pki::{CertUsage, DbRoute, Identity};

    use super::*;

    /// The log as the gateway writes it (fmt, no colours), kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_log_line_of_a_session_names_its_id_peer_user_and_database() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let peer: SocketAddr = "192.0.2.7:50123".parse().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let span = session_span(Protocol::Postgres, "sid-1", peer);
            let _entered = span.enter();
            tracing::info!("before authentication");
            let route = DbRoute {
                service: "orders".into(),
                db_user: None,
                db_name: None,
                db_roles: Vec::new(),
            };
            let auth = Authenticated {
                identity: Identity {
                    username: "alice".into(),
                    cluster: "test".into(),
                    usage: CertUsage::Db,
                    expires: time::OffsetDateTime::now_utc(),
                    route: Some(route.clone()),
                    pinned_ip: None,
                    mfa_session_until: None,
                },
                route,
                peer,
                sid: "sid-1".into(),
                remote: None,
                leaf: None,
            };
            identify(&span, &auth);
            tracing::info!("after authentication");
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert!(line.contains("sid=sid-1"), "{line}");
            assert!(line.contains("peer=192.0.2.7:50123"), "{line}");
            assert!(line.contains("protocol=postgres"), "{line}");
        }
        assert!(lines[1].contains("user=alice"), "{}", lines[1]);
        assert!(lines[1].contains("db=orders"), "{}", lines[1]);
    }
}
