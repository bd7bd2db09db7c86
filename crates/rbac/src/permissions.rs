//! Database Access Controls (`db_permissions`, PostgreSQL): which table privileges a
//! provisioned user gets on each object, and how objects get the labels those rules select.
//!
//! Two pure steps, used by the gateway once it has listed the tables of the session's
//! database: [`ImportRules::label`] gives each object its labels (or leaves it out), then
//! [`object_permissions`] turns the session's rules into a privilege set per object.

use std::collections::{BTreeMap, BTreeSet};

use dbward_model::{DbObjectImportRule, DbPermission, Permission};

use crate::error::RbacError;
use crate::pattern::{any_matches, Pattern};
use crate::selector::{LabelSelector, Traits};
use crate::template::{Template, OBJECT_NAMESPACES};

/// Whether a rule grants or takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionEffect {
    /// From a role's `allow.db_permissions`.
    Allow,
    /// From a role's `deny.db_permissions`.
    Deny,
}

/// One compiled `db_permissions` entry of one role.
#[derive(Debug, Clone)]
pub struct PermissionRule {
    /// Grant or take away.
    pub effect: PermissionEffect,
    /// The role the entry comes from (for logs).
    pub role: String,
    selector: LabelSelector,
    /// The privileges named by the entry.
    pub permissions: BTreeSet<Permission>,
    /// `*` in a deny entry: every privilege.
    pub all: bool,
    /// The entry as a person reads it: `SELECT, INSERT on object_kind=table, schema=public`,
    /// `deny * on name=secrets` (label values as written).
    pub description: String,
}

impl PermissionRule {
    /// Compiles one entry; `*` is only accepted in deny entries, other names must be one of
    /// the seven table privileges (any case).
    pub fn compile(
        effect: PermissionEffect,
        role: &str,
        entry: &DbPermission,
        traits: &Traits,
    ) -> Result<PermissionRule, String> {
        let selector = LabelSelector::compile(&entry.match_labels, traits)?;
        let mut permissions = BTreeSet::new();
        let mut all = false;
        for name in &entry.permissions {
            let name = name.trim();
            if name == "*" {
                if effect == PermissionEffect::Allow {
                    return Err("\"*\" is only allowed in deny rules".to_string());
                }
                all = true;
                continue;
            }
            let permission: Permission = name.parse().map_err(|_| {
                format!(
                    "unknown permission \"{name}\", expected one of {}",
                    Permission::NAMES.join(", ")
                )
            })?;
            permissions.insert(permission);
        }
        let names = if all {
            "*".to_string()
        } else {
            permissions
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let labels = entry
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.join("|")))
            .collect::<Vec<_>>()
            .join(", ");
        let deny = if effect == PermissionEffect::Deny {
            "deny "
        } else {
            ""
        };
        Ok(PermissionRule {
            effect,
            role: role.to_string(),
            selector,
            permissions,
            all,
            description: format!("{deny}{names} on {labels}"),
        })
    }

    /// True when the entry's `match` selects an object with these labels.
    pub fn selects(&self, object_labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(object_labels)
    }
}

/// The privileges one object gets: what allow entries selecting it grant, minus what deny
/// entries selecting it take away (`*` takes everything).
pub fn object_permissions(
    rules: &[PermissionRule],
    object_labels: &BTreeMap<String, String>,
) -> BTreeSet<Permission> {
    let mut granted: BTreeSet<Permission> = rules
        .iter()
        .filter(|r| r.effect == PermissionEffect::Allow && r.selects(object_labels))
        .flat_map(|r| r.permissions.iter().copied())
        .collect();
    for rule in rules
        .iter()
        .filter(|r| r.effect == PermissionEffect::Deny && r.selects(object_labels))
    {
        if rule.all {
            granted.clear();
        } else {
            granted.retain(|p| !rule.permissions.contains(p));
        }
    }
    granted
}

/// [`object_permissions`] for each object, in the same order.
pub fn permissions_for_objects(
    rules: &[PermissionRule],
    objects: &[BTreeMap<String, String>],
) -> Vec<BTreeSet<Permission>> {
    objects
        .iter()
        .map(|labels| object_permissions(rules, labels))
        .collect()
}

/// A database object as listed from the database, before labelling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DbObject {
    /// `table`.
    pub object_kind: String,
    /// Database (catalog) name.
    pub database: String,
    /// Schema name.
    pub schema: String,
    /// Object name.
    pub name: String,
}

impl DbObject {
    /// A table.
    pub fn table(database: &str, schema: &str, name: &str) -> Self {
        DbObject {
            object_kind: "table".to_string(),
            database: database.to_string(),
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }
}

/// Import rules compiled once, sorted so that higher priorities are applied last (and win).
#[derive(Debug, Clone)]
pub struct ImportRules {
    rules: Vec<CompiledImportRule>,
}

#[derive(Debug, Clone)]
struct CompiledImportRule {
    database_labels: LabelSelector,
    mappings: Vec<CompiledMapping>,
}

#[derive(Debug, Clone)]
struct CompiledMapping {
    database_names: Vec<Pattern>,
    schema_names: Vec<Pattern>,
    table_names: Vec<Pattern>,
    add_labels: Vec<(String, Template)>,
}

impl ImportRules {
    /// Compiles `rules`; with no rule at all the default rule applies (every table, labelled
    /// with `object_kind`, `database`, `schema`, `name`, `protocol`, `database_service_name`).
    pub fn new(rules: &[DbObjectImportRule]) -> Result<ImportRules, RbacError> {
        let default_rule;
        let mut sorted: Vec<&DbObjectImportRule> = if rules.is_empty() {
            default_rule = DbObjectImportRule::default_rule();
            vec![&default_rule]
        } else {
            rules.iter().collect()
        };
        // Ties are ordered by name so that the outcome does not depend on listing order.
        sorted.sort_by(|a, b| {
            (a.spec.priority, &a.metadata.name).cmp(&(b.spec.priority, &b.metadata.name))
        });
        let compiled = sorted
            .into_iter()
            .map(compile_import_rule)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImportRules { rules: compiled })
    }

    /// The labels of `object` in the database resource with these labels, protocol and name;
    /// `None` when no rule selects it (such an object gets no privileges).
    pub fn label(
        &self,
        db: &dbward_model::Db,
        object: &DbObject,
    ) -> Option<BTreeMap<String, String>> {
        let mut labels: Option<BTreeMap<String, String>> = None;
        for rule in &self.rules {
            if !rule.database_labels.matches(&db.metadata.labels) {
                continue;
            }
            for mapping in &rule.mappings {
                if !mapping.selects(object) {
                    continue;
                }
                let out = labels.get_or_insert_with(BTreeMap::new);
                let lookup = |_ns: &str, field: &str| -> Vec<String> {
                    let value = match field {
                        "object_kind" => object.object_kind.as_str(),
                        "database" => object.database.as_str(),
                        "schema" => object.schema.as_str(),
                        "name" => object.name.as_str(),
                        "protocol" => db.spec.protocol.as_str(),
                        "database_service_name" => db.metadata.name.as_str(),
                        _ => "",
                    };
                    vec![value.to_string()]
                };
                for (key, template) in &mapping.add_labels {
                    if let Some(value) = template.expand(&lookup).into_iter().next() {
                        out.insert(key.clone(), value);
                    }
                }
            }
        }
        labels
    }
}

impl CompiledMapping {
    fn selects(&self, object: &DbObject) -> bool {
        // An empty scope list means "everywhere"; an empty name list selects nothing.
        (self.database_names.is_empty() || any_matches(&self.database_names, &object.database))
            && (self.schema_names.is_empty() || any_matches(&self.schema_names, &object.schema))
            && object.object_kind == "table"
            && any_matches(&self.table_names, &object.name)
    }
}

/// Fields `{{obj.…}}` may name.
const OBJECT_FIELDS: [&str; 6] = [
    "object_kind",
    "database",
    "schema",
    "name",
    "protocol",
    "database_service_name",
];

fn compile_import_rule(rule: &DbObjectImportRule) -> Result<CompiledImportRule, RbacError> {
    let err = |field: String, message: String| RbacError::InvalidImportRule {
        rule: rule.metadata.name.clone(),
        field,
        message,
    };
    let database_labels = LabelSelector::compile(&rule.spec.database_labels, &Traits::new())
        .map_err(|m| err("database_labels".into(), m))?;
    let mut mappings = Vec::new();
    for (i, mapping) in rule.spec.mappings.iter().enumerate() {
        let patterns = |field: &str, list: &[String]| {
            list.iter()
                .map(|p| Pattern::compile(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| err(format!("mappings[{i}].{field}"), m))
        };
        let mut add_labels = Vec::new();
        for (key, value) in &mapping.add_labels {
            let field = format!("mappings[{i}].add_labels.{key}");
            let template =
                Template::parse(value, OBJECT_NAMESPACES).map_err(|m| err(field.clone(), m))?;
            check_object_fields(value, &template).map_err(|m| err(field, m))?;
            add_labels.push((key.clone(), template));
        }
        mappings.push(CompiledMapping {
            database_names: patterns("scope.database_names", &mapping.scope.database_names)?,
            schema_names: patterns("scope.schema_names", &mapping.scope.schema_names)?,
            table_names: patterns("match.table_names", &mapping.match_objects.table_names)?,
            add_labels,
        });
    }
    Ok(CompiledImportRule {
        database_labels,
        mappings,
    })
}

/// Refuses `{{obj.x}}` for a field objects do not have, which would silently never label.
fn check_object_fields(text: &str, template: &Template) -> Result<(), String> {
    let unknown = std::cell::RefCell::new(None);
    template.expand(&|_ns, field| {
        if !OBJECT_FIELDS.contains(&field) {
            *unknown.borrow_mut() = Some(field.to_string());
        }
        vec!["x".to_string()]
    });
    match unknown.into_inner() {
        Some(field) => Err(format!(
            "{text:?}: unknown field obj.{field}, expected one of {}",
            OBJECT_FIELDS.join(", ")
        )),
        None => Ok(()),
    }
}
