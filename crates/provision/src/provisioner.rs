//! The one provisioning interface ([`Provisioner`]), implemented per engine, and
//! [`Provisioners`], which serves a target with its engine's implementation.
//!
//! The session path, the reconciler and `dbward db check` all go through [`Provisioners`];
//! nothing outside this crate chooses an engine.

use crate::error::ProvisionError;
use crate::mysql::MariaProvisioner;
use crate::names::DbUserName;
use crate::postgres::PgProvisioner;
use crate::{ActivateOutcome, AdminTarget, DeactivateOutcome, Engine, Finding, TeardownMode};

/// What every engine does for automatic user provisioning (PROVISIONING.md §3, §7). The
/// caller holds the per-user lock around `activate`, `deactivate` and `terminate_backend`.
// Called on concrete types only (through `Provisioners`), whose futures are known to be Send.
#[allow(async_fn_in_trait)]
pub trait Provisioner {
    /// The in-database name of `dbward_name` on this server (hashed when too long), after
    /// checking that the server can provision users at all.
    async fn plan_user(
        &self,
        target: &AdminTarget,
        dbward_name: &str,
    ) -> Result<DbUserName, ProvisionError>;

    /// Makes `user` able to log in with exactly `roles`, creating it when it does not exist.
    /// `dbward_name` is the person the user is for.
    async fn activate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        dbward_name: &str,
        roles: &[String],
    ) -> Result<ActivateOutcome, ProvisionError>;

    /// Locks (`Keep`) or drops (`Drop`, locking when objects depend on it) `user` unless it
    /// still has live sessions; a just-closed session is waited for briefly.
    async fn deactivate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        mode: TeardownMode,
    ) -> Result<DeactivateOutcome, ProvisionError>;

    /// Managed users that can log in and have no live session: what a crash leaves behind.
    async fn list_active_managed(
        &self,
        target: &AdminTarget,
    ) -> Result<Vec<String>, ProvisionError>;

    /// What the admin user lacks for provisioning `roles`, each with the statement that
    /// fixes it (`dbward db check`).
    async fn preflight(
        &self,
        target: &AdminTarget,
        roles: &[String],
    ) -> Result<Vec<Finding>, ProvisionError>;

    /// Ends the server connection `backend_id` (PostgreSQL backend pid, MariaDB connection
    /// id) if, and only if, it belongs to the managed `user`. `Ok(true)` when one was ended.
    async fn terminate_backend(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        backend_id: u64,
    ) -> Result<bool, ProvisionError>;
}

/// Every engine's provisioner; serves each target with the one of its engine. Cheap to
/// clone; clones share the warm admin connections.
#[derive(Clone, Default)]
pub struct Provisioners {
    postgres: PgProvisioner,
    mysql: MariaProvisioner,
}

/// The one place an engine is chosen: runs `$call` with `$p` bound to the provisioner of
/// `$target`'s engine.
macro_rules! on_engine {
    ($self:ident, $target:ident, $p:ident => $call:expr) => {
        match $target.engine {
            Engine::Postgres => {
                let $p = &$self.postgres;
                $call
            }
            Engine::Mysql => {
                let $p = &$self.mysql;
                $call
            }
        }
    };
}

impl Provisioners {
    pub fn new(postgres: PgProvisioner, mysql: MariaProvisioner) -> Self {
        Provisioners { postgres, mysql }
    }

    /// The PostgreSQL provisioner, for its engine-specific calls.
    pub fn postgres(&self) -> &PgProvisioner {
        &self.postgres
    }

    /// The MariaDB/MySQL provisioner, for its engine-specific calls.
    pub fn mysql(&self) -> &MariaProvisioner {
        &self.mysql
    }

    pub async fn plan_user(
        &self,
        target: &AdminTarget,
        dbward_name: &str,
    ) -> Result<DbUserName, ProvisionError> {
        on_engine!(self, target, p => Provisioner::plan_user(p, target, dbward_name).await)
    }

    pub async fn activate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        dbward_name: &str,
        roles: &[String],
    ) -> Result<ActivateOutcome, ProvisionError> {
        on_engine!(self, target, p => Provisioner::activate(p, target, user, dbward_name, roles).await)
    }

    pub async fn deactivate(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        mode: TeardownMode,
    ) -> Result<DeactivateOutcome, ProvisionError> {
        on_engine!(self, target, p => Provisioner::deactivate(p, target, user, mode).await)
    }

    pub async fn list_active_managed(
        &self,
        target: &AdminTarget,
    ) -> Result<Vec<String>, ProvisionError> {
        on_engine!(self, target, p => Provisioner::list_active_managed(p, target).await)
    }

    pub async fn preflight(
        &self,
        target: &AdminTarget,
        roles: &[String],
    ) -> Result<Vec<Finding>, ProvisionError> {
        on_engine!(self, target, p => Provisioner::preflight(p, target, roles).await)
    }

    pub async fn terminate_backend(
        &self,
        target: &AdminTarget,
        user: &DbUserName,
        backend_id: u64,
    ) -> Result<bool, ProvisionError> {
        on_engine!(self, target, p => Provisioner::terminate_backend(p, target, user, backend_id).await)
    }
}
