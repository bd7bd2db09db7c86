//! The errors of provisioning, one enum for every engine.
//!
//! The texts of the variants that a connecting person may see are written here once and are
//! part of dbward's contract (PROVISIONING.md). None of them carries SQL or credentials.

use thiserror::Error;

/// Why an admin operation on a database failed.
#[derive(Debug, Error)]
pub enum ProvisionError {
    /// A user with that name exists and is not a member of the marker role: dbward never
    /// touches it.
    #[error("user \"{user}\" already exists in this database and is not managed by dbward")]
    UserNotManaged { user: String },

    /// The user has live sessions that hold a different set of roles than this session asks
    /// for.
    #[error(
        "roles for user \"{user}\" have changed. Please quit all active connections and try again."
    )]
    RolesChanged { user: String },

    /// A requested database role does not exist in the database.
    #[error("database role \"{role}\" does not exist in the database; create it or remove it from the dbward role")]
    RoleMissing { role: String },

    /// A requested database role may never be granted to a provisioned user (the admin user,
    /// the marker role, a managed user, a `dw-role-*` role, a role with superuser-like
    /// attributes, a predefined role the `db` resource does not allow, or a member of one).
    #[error("database role \"{role}\" may not be granted to provisioned users: {reason}")]
    RoleForbidden { role: String, reason: String },

    /// The user carries an attribute or membership that the admin cannot take away (only a
    /// superuser could have given it); dbward refuses to hand it out or leaves it locked.
    #[error("user \"{user}\" has attributes or role memberships that the admin user cannot remove; a superuser must reset it")]
    UserNotClean { user: String },

    /// The admin user may not create or alter roles.
    #[error("admin user \"{admin}\" lacks the CREATEROLE attribute; fix with: ALTER ROLE {quoted_admin} CREATEROLE;")]
    AdminLacksCreateRole { admin: String, quoted_admin: String },

    /// The admin user may not grant or revoke a role: it must hold each role it grants WITH
    /// ADMIN OPTION.
    #[error("admin user \"{admin}\" may not grant role \"{role}\"; fix with: {fix}")]
    AdminCannotGrant {
        admin: String,
        role: String,
        fix: String,
    },

    /// The admin user may not create temporary objects in the database it connects to.
    #[error("admin user \"{admin}\" lacks the TEMPORARY privilege on database \"{database}\"; fix with: {fix}")]
    AdminLacksTemporary {
        admin: String,
        database: String,
        fix: String,
    },

    /// Some other privilege is missing (the database refused with insufficient_privilege).
    #[error("admin user \"{admin}\" lacks a privilege needed for automatic user provisioning; run `dbward db check` for the fix")]
    AdminLacksPrivilege { admin: String },

    /// The database refuses writes: a replica or a read-only default.
    #[error("the database is read-only (a replica, or default_transaction_read_only is on); automatic user provisioning needs a writable primary")]
    ReadOnly,

    /// The name cannot be a database user name.
    #[error("\"{name}\" cannot be used as a database user name: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// The user does not exist (an operation that needs it found nothing).
    #[error("user \"{user}\" does not exist in this database")]
    UserMissing { user: String },

    /// The admin connection could not be established (network, TLS or authentication).
    #[error("cannot connect to the database as admin user \"{admin}\" at {address}: {source}")]
    AdminConnect {
        admin: String,
        address: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),

    /// The provisioning functions answered something this version does not know.
    #[error("unexpected answer from the database's provisioning functions: {0:?}")]
    UnexpectedAnswer(String),

    /// Any other error reported by PostgreSQL or the connection to it.
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl ProvisionError {
    /// The SQLSTATE of the underlying database error, when there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ProvisionError::Postgres(e) | ProvisionError::AdminConnect { source: e, .. } => {
                e.code().map(|c| c.code())
            }
            _ => None,
        }
    }
}
