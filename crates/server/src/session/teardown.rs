//! Step 6 of the pipeline: the end. Whatever happened after provisioning, the session's
//! server-side connection is ended, its database user deactivated or dropped (when no other
//! session uses it) and the session leaves the live set, once.
//!
//! A [`Teardown`] is made as soon as provisioning succeeded and owns what teardown needs. The
//! pipeline hands it how the session [`Ended`]; should the session's task stop before that
//! (a panic, a runtime shutting down), dropping the guard starts the teardown in the
//! background, so no way out of a session leaves its user active.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::engine::Backend;
use super::live::Registration;
use super::{lifecycle, Authorized, Provisioned};
use crate::Gateway;

/// How long the cancel of a vanished client's statement may take.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// How a session that got past provisioning ended.
pub(crate) enum Ended {
    /// It never started: connecting failed, or the client left before its ready reply. No
    /// `db.session.end` is recorded for it.
    NeverStarted,
    /// The relay ran and is over; both connections are closed.
    Relayed {
        backend: Backend,
        /// The client ended the session itself, so nothing of it runs on in the server.
        client_said_goodbye: bool,
        /// Why the gateway ended it, for the `db.session.end` record (an idle client).
        reason: Option<String>,
    },
}

/// What a provisioned session must undo, owned until it is undone.
pub(crate) struct Teardown {
    gw: Arc<Gateway>,
    authorized: Arc<Authorized>,
    /// Taken only by `finish` (which consumes the guard) and by `drop`.
    owed: Option<(Registration, Provisioned)>,
}

const OWED: &str = "a teardown is owed until `finish` or `drop`";

impl Teardown {
    pub fn new(
        gw: Arc<Gateway>,
        registration: Registration,
        provisioned: Provisioned,
        authorized: Authorized,
    ) -> Teardown {
        Teardown {
            gw,
            authorized: Arc::new(authorized),
            owed: Some((registration, provisioned)),
        }
    }

    pub fn authorized(&self) -> &Authorized {
        &self.authorized
    }

    /// The decision and the provisioned user, for the connect step (which releases the
    /// user's lock and records the live session).
    pub fn provisioned(&mut self) -> (&Authorized, &mut Provisioned) {
        let (_, provisioned) = self.owed.as_mut().expect(OWED);
        (&self.authorized, provisioned)
    }

    /// Cancelled when the gateway ends the session (access revoked, shutdown).
    pub fn end_token(&self) -> CancellationToken {
        let (registration, _) = self.owed.as_ref().expect(OWED);
        registration.end.clone()
    }

    /// Tears the session down. Shutdown waits for this through the registration.
    pub async fn finish(mut self, ended: Ended) {
        let Some((registration, provisioned)) = self.owed.take() else {
            return;
        };
        let (gw, authorized) = (&*self.gw, &*self.authorized);
        let Ended::Relayed {
            backend,
            client_said_goodbye,
            reason,
        } = ended
        else {
            return release(gw, registration, provisioned, authorized).await;
        };
        // A client that vanished without saying goodbye (killed, network gone, session ended
        // by the gateway) may leave its backend busy in a long statement, which keeps the
        // user "live" and would stall teardown: cancel whatever it runs so the backend
        // notices and exits.
        if !client_said_goodbye {
            if let Some(cancel) = &backend.cancel {
                let _ = cancel.send(CANCEL_WAIT).await;
            }
        }
        if let Some(id) = backend.id {
            end_backend(gw, authorized, &provisioned.db_user, id).await;
        }
        release(gw, registration, provisioned, authorized).await;
        lifecycle::ended(gw, authorized, reason.as_deref()).await;
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let Some((registration, provisioned)) = self.owed.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::warn!("session stopped before its teardown; tearing down in the background");
        let gw = self.gw.clone();
        let authorized = self.authorized.clone();
        let teardown = async move { release(&gw, registration, provisioned, &authorized).await };
        runtime.spawn(teardown.instrument(tracing::Span::current()));
    }
}

/// The session no longer counts as a live user of its database user: the user is torn down
/// (unless another session uses it) and the session leaves the live set.
async fn release(
    gw: &Gateway,
    registration: Registration,
    provisioned: Provisioned,
    authorized: &Authorized,
) {
    if let Some(key) = registration.relay_finished() {
        super::cancel::forget(gw, &authorized.fields.sid, key).await;
    }
    provisioned.teardown(gw, authorized).await;
    drop(registration);
}

/// Ends the session's server-side connection for good, through the admin. Closing the
/// client's socket is not enough: a PostgreSQL statement may swallow the cancel (a PL/pgSQL
/// handler for `query_canceled`) and a Terminate pipelined behind a statement is read only
/// once it ends; MariaDB notices a closed socket only when the running statement looks at it
/// (`SLEEP` does, `BENCHMARK` and most work do not). Either way the connection would go on
/// with the user's roles, and keep the user active, after the session ended. Only for
/// provisioned users: the admin ends nothing but a connection of the managed user this
/// session used.
async fn end_backend(gw: &Gateway, authorized: &Authorized, db_user: &str, backend_id: i64) {
    if let Ok(id) = u64::try_from(backend_id) {
        super::provisioning::terminate_session_backend(gw, authorized, db_user, id).await;
    }
}
