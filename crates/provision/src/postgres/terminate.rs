//! Ending a backend that outlived the gateway that relayed it (the gateway was killed while
//! its session ran a long statement): `pg_terminate_backend`, guarded so that it can only hit
//! a backend of the managed user the session record names.
//!
//! A non-superuser may signal a backend only when it has the privileges of the backend's
//! role (or is a member of `pg_signal_backend`). An admin with just `CREATEROLE` has neither,
//! so when the plain call is refused the admin takes membership of the user inside a
//! transaction that is rolled back: the signal is sent, the membership never commits.

use crate::error::ProvisionError;
use crate::names::DbUserName;
use crate::MARKER_ROLE;

use super::quote::check_user_name;
use super::{map_error, quote_ident, sqlstate, AdminTarget, PgProvisioner};

/// Terminates backend `$1` when it runs as `$2`, a member of the marker role `$3` without
/// ADMIN OPTION that is not the admin itself. One row: whether a backend was signalled.
const TERMINATE_SQL: &str = "
SELECT coalesce(bool_or(pg_catalog.pg_terminate_backend(a.pid)), false)
FROM pg_catalog.pg_stat_activity a
JOIN pg_catalog.pg_roles u ON u.oid = a.usesysid
WHERE a.pid = $1::int
  AND u.rolname = $2::text
  AND u.rolname <> current_user::text
  AND NOT u.rolsuper
  AND EXISTS (SELECT 1
              FROM pg_catalog.pg_auth_members m
              JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
              WHERE m.member = u.oid AND g.rolname = $3::text AND NOT m.admin_option)";

impl PgProvisioner {
    /// Terminates the backend with process id `pid` if, and only if, it belongs to `user`
    /// and `user` is managed by dbward. `Ok(true)` when a backend was signalled, `Ok(false)`
    /// when no such backend exists (it ended, or the pid is someone else's now).
    pub async fn terminate_backend(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        pid: i32,
    ) -> Result<bool, ProvisionError> {
        check_user_name(user.as_str())?;
        let admin = target.admin_user.clone();
        let user = user.as_str().to_owned();
        self.with_conn(target, move |conn| {
            let (admin, user) = (admin.clone(), user.clone());
            Box::pin(async move {
                let map = |e| map_error(e, &admin, &user);
                // Prepared once per connection: run after every session, and costly to plan.
                let terminate = conn.statement(TERMINATE_SQL).await.map_err(map)?;
                let client = conn.client();
                match client
                    .query_one(&terminate, &[&pid, &user, &MARKER_ROLE])
                    .await
                {
                    Ok(row) => return row.try_get::<_, bool>(0).map_err(map),
                    Err(e) if sqlstate(&e) == Some("42501") => {}
                    Err(e) => return Err(map(e)),
                }
                // Refused: act with the user's privileges for one rolled-back transaction.
                let begin = format!("BEGIN; GRANT {} TO CURRENT_USER", quote_ident(&user));
                if let Err(e) = client.batch_execute(&begin).await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(map(e));
                }
                let signalled = client
                    .query_one(&terminate, &[&pid, &user, &MARKER_ROLE])
                    .await;
                let rolled_back = client.batch_execute("ROLLBACK").await;
                let signalled = signalled.map_err(map)?.try_get::<_, bool>(0).map_err(map)?;
                rolled_back.map_err(map)?;
                Ok(signalled)
            })
        })
        .await
    }
}
