//! The `db_object_import_rule` resource: how tables of a database get the labels that
//! `db_permissions` select on (PostgreSQL).
//!
//! Only the data and its checks live here; applying rules to objects is the rbac crate's job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::{string_list, string_map};
use crate::{Labels, Metadata, ModelError};

/// An import rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbObjectImportRule {
    /// `v1`.
    #[serde(default = "default_rule_version")]
    pub version: String,
    /// Name.
    #[serde(default)]
    pub metadata: Metadata,
    /// Priority, database selector and mappings.
    #[serde(default)]
    pub spec: ImportRuleSpec,
}

fn default_rule_version() -> String {
    "v1".to_string()
}

/// The body of an import rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportRuleSpec {
    /// Rules apply in ascending priority; a later (higher) rule's labels win.
    #[serde(default)]
    pub priority: i64,
    /// Which databases (by their labels) the rule applies to.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub database_labels: Labels,
    /// Object selections and the labels they receive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<ImportMapping>,
}

/// One mapping: objects in `scope` whose names match `match` get `add_labels`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportMapping {
    /// Databases and schemas the mapping looks in (empty: all).
    #[serde(default, skip_serializing_if = "ImportScope::is_empty")]
    pub scope: ImportScope,
    /// Object names the mapping selects.
    #[serde(rename = "match", default)]
    pub match_objects: ImportMatch,
    /// Labels set on selected objects; values may use `{{obj.name}}`-style templates.
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub add_labels: BTreeMap<String, String>,
}

/// Where a mapping looks: database and schema name globs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportScope {
    /// Database name globs; empty means every database.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub database_names: Vec<String>,
    /// Schema name globs; empty means every schema.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub schema_names: Vec<String>,
}

impl ImportScope {
    fn is_empty(&self) -> bool {
        self.database_names.is_empty() && self.schema_names.is_empty()
    }
}

/// Which objects a mapping selects.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportMatch {
    /// Table name globs.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub table_names: Vec<String>,
}

impl DbObjectImportRule {
    /// The resource kind as written in files.
    pub const KIND: &'static str = "db_object_import_rule";

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The rule used when none exists: every table, labelled with its own coordinates.
    pub fn default_rule() -> Self {
        let add_labels = [
            "object_kind",
            "database",
            "schema",
            "name",
            "protocol",
            "database_service_name",
        ]
        .into_iter()
        .map(|k| (k.to_string(), format!("{{{{obj.{k}}}}}")))
        .collect();
        DbObjectImportRule {
            version: default_rule_version(),
            metadata: Metadata::named("import_all_objects"),
            spec: ImportRuleSpec {
                priority: 0,
                database_labels: Labels::wildcard(),
                mappings: vec![ImportMapping {
                    scope: ImportScope::default(),
                    match_objects: ImportMatch {
                        table_names: vec!["*".to_string()],
                    },
                    add_labels,
                }],
            },
        }
    }

    /// Checks name, version and that label keys are not empty.
    pub fn validate(&self) -> Result<(), ModelError> {
        let subject = format!("db_object_import_rule \"{}\"", self.metadata.name);
        self.metadata.validate(&subject)?;
        if self.version != "v1" {
            return Err(ModelError::invalid(
                subject,
                format!("unsupported version \"{}\", expected v1", self.version),
            ));
        }
        for (i, mapping) in self.spec.mappings.iter().enumerate() {
            if mapping.add_labels.keys().any(|k| k.trim().is_empty()) {
                return Err(ModelError::invalid(
                    subject,
                    format!("spec.mappings[{i}].add_labels has an empty key"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rule_labels_every_table_with_templates() {
        let rule = DbObjectImportRule::default_rule();
        rule.validate().unwrap();
        let mapping = &rule.spec.mappings[0];
        assert_eq!(mapping.match_objects.table_names, vec!["*"]);
        assert_eq!(mapping.add_labels["schema"], "{{obj.schema}}");
        assert_eq!(mapping.add_labels.len(), 6);
    }
}
