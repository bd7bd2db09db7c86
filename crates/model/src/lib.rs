//! dbward's data model: the configuration file and the resources (role, user, db,
//! db_object_import_rule), how they are read from and written to YAML and JSON, and the rules
//! they must follow.
//!
//! This crate does no I/O beyond reading a configuration file by path; access decisions live
//! in the rbac crate.

pub mod config;
pub mod db;
pub mod duration;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod import_rule;
pub mod labels;
pub mod metadata;
pub mod oidc;
pub mod permission;
pub mod resource;
pub mod role;
mod source;
pub mod trusted_cluster;
pub mod user;

pub use config::{Config, Limits, LogFormat, StaticDb, Storage, StorageBackend};
pub use db::{AdminUser, Db, DbSpec, DbTls, Protocol, TlsMode};
pub use duration::{format_duration, parse_duration};
pub use error::ModelError;
pub use import_rule::{
    DbObjectImportRule, ImportMapping, ImportMatch, ImportRuleSpec, ImportScope,
};
pub use labels::{LabelValues, Labels};
pub use metadata::Metadata;
pub use oidc::{ClaimMapping, OidcConnector, OidcSpec};
pub use permission::Permission;
pub use resource::{
    parse_resources, parse_resources_with, ParsedResources, Resource, ResourceCheck,
};
pub use role::{
    CreateDbUserMode, DbPermission, RestrictionScope, Role, RoleConditions, RoleOptions, RoleSpec,
    UnenforcedOption,
};
pub use trusted_cluster::{RoleMapping, TrustedCluster, TrustedClusterSpec};
pub use user::{User, UserSpec};
