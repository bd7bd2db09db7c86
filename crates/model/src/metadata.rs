//! Metadata shared by every resource: name, description, labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::string_map;
use crate::ModelError;

/// `metadata:` of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// Unique name within the kind.
    #[serde(default)]
    pub name: String,
    /// Free text shown in listings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Labels that selectors match against.
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata with only a name.
    pub fn named(name: &str) -> Self {
        Metadata {
            name: name.to_string(),
            ..Metadata::default()
        }
    }

    pub(crate) fn validate(&self, subject: &str) -> Result<(), ModelError> {
        if self.name.trim().is_empty() {
            return Err(ModelError::invalid(
                subject,
                "metadata.name must not be empty",
            ));
        }
        if self.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(ModelError::invalid(
                subject,
                "metadata.name must not contain control characters or '/'",
            ));
        }
        Ok(())
    }
}
