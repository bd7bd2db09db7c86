//! Step 5 of the pipeline: the relay. Bytes go both ways through the engine's relay until
//! either side closes, the client stays silent longer than the `client_idle_timeout` of its
//! roles (it is told so first), or the gateway ends the session (access revoked, shutdown); what the
//! client sends goes through a [`SessionTap`] to the audit. Both connections are closed when
//! this step returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dbward_proxy::RelayEnd;
use tokio_util::sync::CancellationToken;

use super::connect::Connected;
use super::engine::{Engine, IdleTimeout};
use super::teardown::Ended;
use super::Authorized;
use crate::audit::{self, SessionFields};
use crate::Gateway;

/// What an engine's relay reports about the client's side of a session. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SessionTap {
    gw: Arc<Gateway>,
    fields: Arc<SessionFields>,
    goodbye: Arc<AtomicBool>,
}

impl SessionTap {
    fn new(gw: &Arc<Gateway>, fields: &SessionFields) -> SessionTap {
        SessionTap {
            gw: gw.clone(),
            fields: Arc::new(fields.clone()),
            goodbye: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A statement the client sends: queued for the audit writer, so the relay pays one
    /// channel send per statement.
    pub fn query(&self, sql: &str) {
        self.gw.audit.query(&self.fields, sql);
    }

    /// The client ends its session itself (PostgreSQL Terminate, MySQL COM_QUIT).
    pub fn goodbye(&self) {
        self.goodbye.store(true, Ordering::Relaxed);
    }

    /// A command the relay refused and answered itself, never forwarded: recorded as the
    /// failed query it was, off the relay's path.
    pub fn refused(&self, command: &'static str, message: String) {
        tracing::warn!(command, "client command refused");
        let gw = self.gw.clone();
        let fields = self.fields.clone();
        tokio::spawn(async move {
            let extra = serde_json::json!({
                "db_query": command,
                "success": false,
                "error": message,
            });
            gw.audit.emit(audit::SESSION_QUERY, &fields, extra).await;
        });
    }

    fn said_goodbye(&self) -> bool {
        self.goodbye.load(Ordering::Relaxed)
    }
}

/// Relays until the session is over, then says how it ended for the teardown.
pub(crate) async fn relay<E: Engine>(
    gw: &Arc<Gateway>,
    client: E::Client,
    connected: Connected<E>,
    authorized: &Authorized,
    end: CancellationToken,
) -> Ended {
    let tap = SessionTap::new(gw, &authorized.fields);
    let Connected {
        upstream, backend, ..
    } = connected;
    let idle = authorized
        .decision
        .limits
        .client_idle_timeout
        .map(|after| IdleTimeout {
            after,
            message: idle_message(after),
        });
    let mut reason = None;
    tokio::select! {
        stats = E::relay(client, upstream, tap.clone(), idle) => {
            gw.metrics.relayed(&authorized.fields, stats.client_to_server, stats.server_to_client);
            tracing::debug!(up = stats.client_to_server, down = stats.server_to_client, end = ?stats.end, "relay finished");
            if let RelayEnd::Idle(after) = stats.end {
                tracing::info!(idle = %dbward_model::format_duration(after), "session closed: the client was idle");
                reason = Some(format!(
                    "client idle for {} (client_idle_timeout)",
                    dbward_model::format_duration(after)
                ));
            }
        }
        _ = end.cancelled() => {
            tracing::info!("session ended by the gateway");
        }
    }
    Ended::Relayed {
        backend,
        client_said_goodbye: tap.said_goodbye(),
        reason,
    }
}

/// What an idle client reads before its session is closed.
fn idle_message(after: std::time::Duration) -> String {
    format!(
        "terminating connection: the client sent nothing for {} (client_idle_timeout of your dbward roles)",
        dbward_model::format_duration(after)
    )
}
