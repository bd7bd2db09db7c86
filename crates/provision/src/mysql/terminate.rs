//! Ending a connection that outlived the gateway that relayed it (the gateway was killed
//! while its session ran a long statement): `KILL CONNECTION`, guarded so that it can only
//! hit a connection of the user the session record names. The admin needs `CONNECTION
//! ADMIN` (or `SUPER`) to kill another user's connection; without it the error says so.

use crate::error::ProvisionError;
use crate::names::DbUserName;

use super::conn::hex_literal;
use super::{count, exec, quote, render, AdminTarget, MariaProvisioner};

const CONNECTION_OF_SQL: &str = include_str!("sql/connection_of.sql");

impl MariaProvisioner {
    /// Kills connection `id` if, and only if, it belongs to `user` (and not to the admin).
    /// `Ok(true)` when it was killed, `Ok(false)` when no such connection exists.
    pub async fn kill_connection(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        id: u64,
    ) -> Result<bool, ProvisionError> {
        quote::check_user_name(user.as_str())?;
        let admin = target.admin_user.as_str();
        let name = user.as_str();
        if name == admin {
            return Ok(false);
        }
        let mut conn = self.conn(target).await?;
        let sql = render(
            CONNECTION_OF_SQL,
            &[("id", &id.to_string()), ("user", &hex_literal(name))],
        );
        let found = count(&mut conn, &sql, admin).await?;
        if found == 0 {
            self.give_back(target, conn);
            return Ok(false);
        }
        exec(&mut conn, &format!("KILL CONNECTION {id}"), admin).await?;
        self.give_back(target, conn);
        Ok(true)
    }
}
