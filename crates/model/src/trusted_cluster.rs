//! The `trusted_cluster` resource (v2, as Teleport's), created on a leaf cluster: which root
//! cluster to join, with which join token, and how the root's roles map to the leaf's.
//!
//! Only the data and its checks live here; joining is the server's job and mapping roles the
//! rbac crate's.

use serde::{Deserialize, Serialize};

use crate::labels::string_list;
use crate::{Metadata, ModelError};

/// A trusted cluster. `metadata.name` is the root cluster's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedCluster {
    /// `v2`.
    #[serde(default = "default_version")]
    pub version: String,
    /// The root cluster's name.
    #[serde(default)]
    pub metadata: Metadata,
    /// Whether the trust is on, how to join, and the role map.
    #[serde(default)]
    pub spec: TrustedClusterSpec,
}

fn default_version() -> String {
    "v2".to_string()
}

fn default_enabled() -> bool {
    true
}

/// The body of a trusted cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedClusterSpec {
    /// `false` removes the trust at once (and ends the root users' sessions); default `true`.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The join token made on the root with `dbward tokens add --type trusted_cluster`.
    #[serde(default)]
    pub token: String,
    /// The root gateway's web address, `HOST:PORT`.
    #[serde(default)]
    pub web_proxy_addr: String,
    /// Root roles (`remote`: a name, `*` or `^regex$`) to leaf roles (`local`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_map: Vec<RoleMapping>,
}

impl Default for TrustedClusterSpec {
    fn default() -> Self {
        TrustedClusterSpec {
            enabled: true,
            token: String::new(),
            web_proxy_addr: String::new(),
            role_map: Vec::new(),
        }
    }
}

/// One entry of the role map.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoleMapping {
    /// The root role: a name, `*`, or an anchored regular expression `^…$`.
    #[serde(default)]
    pub remote: String,
    /// The leaf roles a root user holding a matching role gets.
    #[serde(default, deserialize_with = "string_list")]
    pub local: Vec<String>,
}

impl TrustedCluster {
    /// The resource kind as written in files.
    pub const KIND: &'static str = "trusted_cluster";

    /// Checks name, version, address and role map.
    pub fn validate(&self) -> Result<(), ModelError> {
        let subject = format!("trusted_cluster \"{}\"", self.metadata.name);
        self.metadata.validate(&subject)?;
        if self.version != "v2" {
            return Err(ModelError::invalid(
                subject,
                format!("unsupported version \"{}\", expected v2", self.version),
            ));
        }
        if self.spec.web_proxy_addr.trim().is_empty() {
            return Err(ModelError::invalid(
                subject,
                "spec.web_proxy_addr is required (the root gateway's HOST:PORT)",
            ));
        }
        for (i, mapping) in self.spec.role_map.iter().enumerate() {
            if mapping.remote.trim().is_empty() {
                return Err(ModelError::invalid(
                    subject,
                    format!("spec.role_map[{i}].remote is empty"),
                ));
            }
            if mapping.local.is_empty() || mapping.local.iter().any(|l| l.trim().is_empty()) {
                return Err(ModelError::invalid(
                    subject,
                    format!("spec.role_map[{i}].local needs at least one role name"),
                ));
            }
        }
        Ok(())
    }
}
