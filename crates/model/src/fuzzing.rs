//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay tests: each takes
//! arbitrary bytes, drives one loader of resource or configuration text, and must never
//! panic.

use crate::{parse_resources, Config, Resource};

/// A resource file as `dbward create -f` sends it (multi-document YAML, a YAML list, a JSON
/// object or array), and the same bytes as the stored JSON form of one resource.
///
/// Every resource the file yields must survive the way the gateway keeps it: written to the
/// store as JSON and read back, and printed as YAML (`dbward get`) and loaded again.
pub fn resources(data: &[u8]) {
    if let Ok(stored) = serde_json::from_slice::<Resource>(data) {
        let _ = stored.validate();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse_resources(text, "fuzz.yaml") else {
        return;
    };
    for resource in &parsed.resources {
        let json = serde_json::to_string(resource).expect("a resource serialises to JSON");
        let stored: Resource = serde_json::from_str(&json)
            .unwrap_or_else(|err| panic!("stored JSON does not load back: {err}\n{json}"));
        assert_eq!(&stored, resource, "JSON round trip changed the resource");
        let yaml = resource.to_yaml();
        let reloaded = parse_resources(&yaml, "get.yaml")
            .unwrap_or_else(|err| panic!("printed YAML does not load back: {err}\n{yaml}"));
        assert_eq!(
            reloaded.resources.as_slice(),
            std::slice::from_ref(resource),
            "YAML round trip changed the resource"
        );
    }
}

/// The gateway's configuration file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_yaml(text, "dbward.yaml") {
        let _ = config.static_dbs();
    }
}
