//! Access decisions for dbward: may a dbward user reach a database, as which db user, into
//! which db name, with which db roles or table permissions, and in which provisioning mode.
//!
//! Pure logic over the model's resources: no I/O, no clock, no database. The gateway builds
//! an [`AccessChecker`] from a user and their roles (read from the store at connect time)
//! and asks it about one database at a time. Label selectors and trait templates are
//! compiled once in [`AccessChecker::new`].
//!
//! - [`pattern`]: literal / glob / `^regex$` value matching, shared by every selector.
//! - [`template`]: `{{internal.x}}`-style trait templates.
//! - [`selector`]: label selectors (keys AND, values OR, `"*": "*"`, empty matches nothing).
//! - [`checker`]: the decision itself (PROVISIONING.md §1).
//! - [`permissions`]: `db_permissions` and import rules (PROVISIONING.md §6).

pub mod checker;
pub mod error;
pub mod pattern;
pub mod permissions;
pub mod role_map;
pub mod selector;
pub mod template;

pub use checker::{
    parse_resources, validate_role, AccessChecker, Decision, Provisioning, ProvisioningMode,
    SessionLimits,
};
pub use error::{AccessDenied, DenialKind, RbacError, GENERIC_DENIAL};
pub use permissions::{
    object_permissions, permissions_for_objects, DbObject, ImportRules, PermissionEffect,
    PermissionRule,
};
pub use role_map::{check_role_map, map_remote_roles};
pub use selector::LabelSelector;

#[cfg(test)]
mod tests;
