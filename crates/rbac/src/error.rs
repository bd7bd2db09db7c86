//! What can go wrong in this crate: a role or import rule that cannot be compiled
//! ([`RbacError`], for the operator), and a connection that is refused ([`AccessDenied`],
//! with one text for the user and the detailed reason for the server log).

use thiserror::Error;

/// The text every denial shows the user unless a more specific message is part of the
/// contract (wrong user name, database role not allowed, no admin user, roles with
/// permissions). Saying why would tell a prober which names and labels exist.
pub const GENERIC_DENIAL: &str =
    "access to db denied. User does not have permissions. Confirm database user and name.";

/// A role or import rule that cannot be used as written.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RbacError {
    /// A template, pattern or permission in a role is invalid.
    #[error("role \"{role}\": {field}: {message}")]
    InvalidRole {
        /// Role name.
        role: String,
        /// Where in the role, e.g. `allow.db_labels`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A pattern or template in an import rule is invalid.
    #[error("db_object_import_rule \"{rule}\": {field}: {message}")]
    InvalidImportRule {
        /// Rule name.
        rule: String,
        /// Where in the rule, e.g. `mappings[0].add_labels`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Why a connection was refused; decides what the user is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialKind {
    /// Any refusal whose detail stays in the server log.
    Generic,
    /// A role asked for with `--db-roles` is not in the allowed set.
    DbRoleNotAllowed {
        /// The first role that is not allowed.
        role: String,
    },
    /// Provisioning is on and the db user is not the dbward user name.
    WrongDbUser {
        /// The dbward user name.
        expected: String,
        /// The db user that was asked for.
        requested: String,
    },
    /// Provisioning is on but the database resource names no admin user.
    NoAdminUser {
        /// The database resource name.
        db: String,
    },
    /// The session would get both database roles and fine-grained permissions.
    RolesAndPermissions,
    /// A role gives `db_permissions` on a database whose engine dbward cannot apply them to
    /// (anything but PostgreSQL): refused rather than connected with nothing granted.
    PermissionsUnsupported {
        /// The database resource name.
        db: String,
    },
}

/// A refused connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDenied {
    kind: DenialKind,
    reason: String,
}

impl AccessDenied {
    pub(crate) fn generic(reason: impl Into<String>) -> Self {
        AccessDenied {
            kind: DenialKind::Generic,
            reason: reason.into(),
        }
    }

    pub(crate) fn new(kind: DenialKind, reason: impl Into<String>) -> Self {
        AccessDenied {
            kind,
            reason: reason.into(),
        }
    }

    /// What kind of refusal this is.
    pub fn kind(&self) -> &DenialKind {
        &self.kind
    }

    /// The text the user sees.
    pub fn user_message(&self) -> String {
        match &self.kind {
            DenialKind::Generic => GENERIC_DENIAL.to_string(),
            DenialKind::DbRoleNotAllowed { role } => {
                format!("access to database role \"{role}\" denied")
            }
            DenialKind::WrongDbUser {
                expected,
                requested,
            } => format!(
                "please use your dbward username (\"{expected}\") to connect instead of \"{requested}\""
            ),
            DenialKind::NoAdminUser { db } => format!(
                "database \"{db}\" has no admin user configured: automatic user provisioning \
                 needs admin_user in the db resource"
            ),
            DenialKind::RolesAndPermissions => {
                "fine-grained database permissions and database roles are mutually exclusive"
                    .to_string()
            }
            DenialKind::PermissionsUnsupported { db } => format!(
                "database \"{db}\": db_permissions are only supported on PostgreSQL; \
                 use db_roles for this database"
            ),
        }
    }

    /// The detailed reason, for the server log only.
    pub fn reason(&self) -> String {
        self.reason.clone()
    }
}

impl std::fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.user_message())
    }
}

impl std::error::Error for AccessDenied {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_denial_hides_the_reason() {
        let d = AccessDenied::generic("role \"x\" denies db_user \"root\"");
        assert_eq!(d.user_message(), GENERIC_DENIAL);
        assert_eq!(d.to_string(), GENERIC_DENIAL);
        assert!(d.reason().contains("root"));
    }
}
