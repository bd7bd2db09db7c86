//! The errors of provisioning, one enum for every engine, and what a client may see of them.
//!
//! The texts of the variants that a connecting person may see are written here once and are
//! part of dbward's contract (PROVISIONING.md). None of them carries SQL or credentials.
//! Each error type of dbward says itself what a client may be told ([`UserFacingError`]); the
//! full text, with its sources, is for the log and for `dbward db check`.

use thiserror::Error;

/// Who an error is about, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The person's own request: their name, roles, a user they may not take over.
    User,
    /// The client went away or spoke the protocol wrong.
    Client,
    /// The database or its admin user: unreachable, misconfigured, missing a privilege.
    Database,
    /// dbward itself: a bug, an answer it does not understand, its store.
    Internal,
}

impl ErrorKind {
    /// The kind's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::User => "user",
            ErrorKind::Client => "client",
            ErrorKind::Database => "database",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error that knows what a client may read about it.
pub trait UserFacingError: std::error::Error {
    /// The text a client may read, or `None`: then it gets a generic message with its
    /// session id, and the detail goes to the log.
    fn client_message(&self) -> Option<String>;
    /// Who the error is about.
    fn kind(&self) -> ErrorKind;
}

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

    /// MariaDB: the schema the admin logs into (and keeps `user_attributes` in) does not
    /// exist.
    #[error(
        "schema \"{schema}\" that admin user \"{admin}\" logs into does not exist; fix with: {fix}"
    )]
    AdminSchemaMissing {
        admin: String,
        schema: String,
        fix: String,
    },

    /// MariaDB: the admin may not enter the schema it logs into.
    #[error("admin user \"{admin}\" may not enter schema \"{schema}\"; fix with: {fix}")]
    AdminSchemaDenied {
        admin: String,
        schema: String,
        fix: String,
    },

    /// Some other privilege is missing (the database refused with insufficient_privilege).
    #[error("admin user \"{admin}\" lacks a privilege needed for automatic user provisioning; run `dbward db check` for the fix")]
    AdminLacksPrivilege { admin: String },

    /// The database refuses writes: a replica or a read-only default.
    #[error("the database is read-only (a replica, or default_transaction_read_only is on); automatic user provisioning needs a writable primary")]
    ReadOnly,

    /// The server's version cannot provision users (the text names the oldest that can).
    #[error("{0}")]
    Unsupported(String),

    /// The name cannot be a database user name.
    #[error("\"{name}\" cannot be used as a database user name: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// The admin connection could not be established (network, TLS or authentication).
    #[error("cannot connect to the database as admin user \"{admin}\" at {address}: {source}")]
    AdminConnect {
        admin: String,
        address: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),

    /// The provisioning statements answered something this version does not know.
    #[error("unexpected answer from the database's provisioning statements: {0:?}")]
    UnexpectedAnswer(String),

    /// Any other error reported by PostgreSQL or the connection to it.
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),

    /// Any other error reported by MariaDB/MySQL or the connection to it.
    #[error("MariaDB error: {0}")]
    Mysql(#[from] crate::mysql::MysqlError),
}

impl UserFacingError for ProvisionError {
    fn client_message(&self) -> Option<String> {
        // No wildcard: a new variant must be decided on here.
        match self {
            // About the person's own name and roles; PROVISIONING §2, §3; the server's
            // version (§5).
            ProvisionError::UserNotManaged { .. }
            | ProvisionError::RolesChanged { .. }
            | ProvisionError::RoleMissing { .. }
            | ProvisionError::InvalidName { .. }
            | ProvisionError::Unsupported(_) => Some(self.to_string()),
            // The role is named (it came from the person's roles or traits); why it is
            // refused (it is the admin, a superuser role, ...) is for the log only.
            ProvisionError::RoleForbidden { role, .. } => Some(format!(
                "database role \"{role}\" may not be granted to provisioned users"
            )),
            // What the database refused, in the words of the PostgreSQL guide's
            // troubleshooting entries, without the admin's name or the fix (those are for
            // the operator: the log and `dbward db check`).
            ProvisionError::AdminCannotGrant { role, .. } => {
                Some(format!("permission denied to grant role \"{role}\""))
            }
            ProvisionError::AdminLacksTemporary { database, .. } => Some(format!(
                "permission denied to create temporary tables in database \"{database}\""
            )),
            ProvisionError::AdminSchemaMissing { schema, .. } => Some(format!(
                "schema \"{schema}\" for automatic user provisioning does not exist in the database"
            )),
            ProvisionError::AdminSchemaDenied { schema, .. } => Some(format!(
                "access denied to schema \"{schema}\" for automatic user provisioning"
            )),
            ProvisionError::ReadOnly => Some(self.to_string()),
            // The admin, its privileges, the server: for the operator only.
            ProvisionError::AdminLacksCreateRole { .. }
            | ProvisionError::AdminLacksPrivilege { .. }
            | ProvisionError::UserNotClean { .. }
            | ProvisionError::AdminConnect { .. }
            | ProvisionError::Timeout(_)
            | ProvisionError::UnexpectedAnswer(_)
            | ProvisionError::Postgres(_)
            | ProvisionError::Mysql(_) => None,
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            ProvisionError::UserNotManaged { .. }
            | ProvisionError::RolesChanged { .. }
            | ProvisionError::RoleMissing { .. }
            | ProvisionError::RoleForbidden { .. }
            | ProvisionError::InvalidName { .. } => ErrorKind::User,
            ProvisionError::AdminLacksCreateRole { .. }
            | ProvisionError::AdminCannotGrant { .. }
            | ProvisionError::AdminLacksTemporary { .. }
            | ProvisionError::AdminLacksPrivilege { .. }
            | ProvisionError::AdminSchemaMissing { .. }
            | ProvisionError::AdminSchemaDenied { .. }
            | ProvisionError::ReadOnly
            | ProvisionError::Unsupported(_)
            | ProvisionError::UserNotClean { .. }
            | ProvisionError::AdminConnect { .. }
            | ProvisionError::Timeout(_)
            | ProvisionError::Postgres(_)
            | ProvisionError::Mysql(_) => ErrorKind::Database,
            ProvisionError::UnexpectedAnswer(_) => ErrorKind::Internal,
        }
    }
}

impl ProvisionError {
    /// An operator can fix this in the database: `dbward db check` names the fix.
    pub fn fixed_by_db_check(&self) -> bool {
        matches!(
            self,
            ProvisionError::AdminLacksCreateRole { .. }
                | ProvisionError::AdminCannotGrant { .. }
                | ProvisionError::AdminLacksTemporary { .. }
                | ProvisionError::AdminLacksPrivilege { .. }
                | ProvisionError::AdminSchemaMissing { .. }
                | ProvisionError::AdminSchemaDenied { .. }
                | ProvisionError::ReadOnly
                | ProvisionError::AdminConnect { .. }
        )
    }

    /// PostgreSQL refused the admin's login to a database it may not enter (no CONNECT
    /// privilege, SQLSTATE 42501) or that does not exist (3D000): the server's own error
    /// (SQLSTATE, message, detail), which names the database only, for the client.
    pub fn admin_login_refused(&self) -> Option<(String, String, Option<String>)> {
        let ProvisionError::AdminConnect { source, .. } = self else {
            return None;
        };
        let db = source
            .downcast_ref::<tokio_postgres::Error>()?
            .as_db_error()?;
        let code = db.code().code();
        (code == "42501" || code == "3D000").then(|| {
            (
                code.to_string(),
                db.message().to_string(),
                db.detail().map(str::to_string),
            )
        })
    }
}

/// An error with its causes on one line, for the log and for `dbward db check` (a driver's
/// own message is often just "db error").
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}
