//! The typed view of the resources kept in the store (roles, users, databases, import rules),
//! plus the static databases of the configuration file.
//!
//! Connections read roles and users from here at connect time, so a change made with
//! `dbward create` or `dbward rm` applies to the next connection at once. The parsed view is
//! cached and rebuilt only when the store's revision moves.

use std::collections::BTreeMap;
use std::sync::Arc;

use dbward_model::{Db, DbObjectImportRule, OidcConnector, Resource, Role, TrustedCluster, User};
use dbward_rbac::AccessChecker;
use dbward_store::Store;
use tokio::sync::Mutex;

use crate::error::GatewayError;

/// Resource kinds as stored (the `kind` field of the YAML).
pub const KIND_ROLE: &str = "role";
pub const KIND_USER: &str = "user";
pub const KIND_DB: &str = "db";
pub const KIND_IMPORT_RULE: &str = "db_object_import_rule";
pub const KIND_OIDC: &str = "oidc";
pub const KIND_TRUSTED_CLUSTER: &str = "trusted_cluster";
pub const KINDS: [&str; 6] = [
    KIND_ROLE,
    KIND_USER,
    KIND_DB,
    KIND_IMPORT_RULE,
    KIND_OIDC,
    KIND_TRUSTED_CLUSTER,
];

/// Normalises the kind words accepted on the command line (`roles`, `db`, `dbs`, …).
pub fn canonical_kind(word: &str) -> Option<&'static str> {
    match word {
        "role" | "roles" => Some(KIND_ROLE),
        "user" | "users" => Some(KIND_USER),
        "db" | "dbs" | "database" | "databases" => Some(KIND_DB),
        "db_object_import_rule" | "db_object_import_rules" => Some(KIND_IMPORT_RULE),
        "oidc" | "oidcs" | "oidc_connector" | "oidc_connectors" => Some(KIND_OIDC),
        "trusted_cluster" | "trusted_clusters" | "tc" => Some(KIND_TRUSTED_CLUSTER),
        _ => None,
    }
}

/// One consistent view of all resources.
#[derive(Default)]
pub struct Snapshot {
    pub roles: BTreeMap<String, Role>,
    pub users: BTreeMap<String, User>,
    /// Static databases from the config first; a stored `db` of the same name wins.
    pub dbs: BTreeMap<String, Db>,
    pub import_rules: Vec<DbObjectImportRule>,
    /// Single sign-on connectors.
    pub oidc: BTreeMap<String, OidcConnector>,
    /// `trusted_cluster` resources as written, by name.
    pub trusted_clusters: BTreeMap<String, TrustedCluster>,
    /// The roots this cluster trusts now: enabled `trusted_cluster`s whose join completed.
    pub trusted: BTreeMap<String, crate::trust::TrustedRoot>,
    /// Access checkers (compiled selectors and templates) per user, built on first use and
    /// valid as long as this snapshot: a resource change makes a new snapshot.
    checkers: std::sync::Mutex<std::collections::HashMap<String, Arc<AccessChecker>>>,
}

impl Snapshot {
    /// The access checker of `user`, compiled once per snapshot.
    pub fn checker(&self, user: &User) -> Result<Arc<AccessChecker>, dbward_rbac::RbacError> {
        let name = &user.metadata.name;
        if let Some(checker) = self.lock_checkers().get(name) {
            return Ok(checker.clone());
        }
        let checker = Arc::new(AccessChecker::new(user, &self.roles_of(user))?);
        self.lock_checkers().insert(name.clone(), checker.clone());
        Ok(checker)
    }

    fn lock_checkers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<AccessChecker>>> {
        self.checkers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The roles a user holds; a role name that does not exist is skipped (as if removed).
    pub fn roles_of(&self, user: &User) -> Vec<Role> {
        user.spec
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name).cloned())
            .collect()
    }
}

pub struct Catalog {
    store: Store,
    static_dbs: Vec<Db>,
    cached: Mutex<Option<(i64, Arc<Snapshot>)>>,
}

impl Catalog {
    pub fn new(store: Store, static_dbs: Vec<Db>) -> Self {
        Self {
            store,
            static_dbs,
            cached: Mutex::new(None),
        }
    }

    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, GatewayError> {
        let revision = self.store.resources_revision().await?;
        let mut cached = self.cached.lock().await;
        if let Some((rev, snap)) = cached.as_ref() {
            if *rev == revision {
                return Ok(snap.clone());
            }
        }
        let snap = Arc::new(self.load().await?);
        *cached = Some((revision, snap.clone()));
        Ok(snap)
    }

    async fn load(&self) -> Result<Snapshot, GatewayError> {
        let mut snap = Snapshot::default();
        for db in &self.static_dbs {
            snap.dbs.insert(db.metadata.name.clone(), db.clone());
        }
        for kind in KINDS {
            for (name, json) in self.store.list_resources(kind).await? {
                let resource: Resource = match serde_json::from_str(&json) {
                    Ok(r) => r,
                    Err(err) => {
                        tracing::error!(kind, name, %err, "stored resource does not parse; skipped");
                        continue;
                    }
                };
                match resource {
                    Resource::Role(r) => {
                        snap.roles.insert(name, r);
                    }
                    Resource::User(u) => {
                        snap.users.insert(name, u);
                    }
                    Resource::Db(d) => {
                        snap.dbs.insert(name, d);
                    }
                    Resource::DbObjectImportRule(r) => snap.import_rules.push(r),
                    Resource::Oidc(c) => {
                        snap.oidc.insert(name, c);
                    }
                    Resource::TrustedCluster(t) => {
                        if t.spec.enabled {
                            if let Some(record) =
                                crate::trust::root_record(&self.store, &name).await?
                            {
                                let trusted = crate::trust::TrustedRoot {
                                    record,
                                    role_map: t.spec.role_map.clone(),
                                };
                                snap.trusted.insert(name.clone(), trusted);
                            }
                        }
                        snap.trusted_clusters.insert(name, t);
                    }
                }
            }
        }
        Ok(snap)
    }
}
