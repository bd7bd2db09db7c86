//! A trusted cluster's `role_map`: which leaf roles a root user gets for the roles the root
//! vouches for. Unmapped roles are dropped; a user none of whose roles map gets nothing.

use dbward_model::RoleMapping;

use crate::pattern::Pattern;

/// Checks that every `remote` of a role map compiles (a name, `*`, a glob or `^regex$`).
pub fn check_role_map(role_map: &[RoleMapping]) -> Result<(), String> {
    for (i, mapping) in role_map.iter().enumerate() {
        Pattern::compile(&mapping.remote).map_err(|m| format!("spec.role_map[{i}].remote: {m}"))?;
    }
    Ok(())
}

/// The leaf roles for `remote_roles`, sorted and unique. A mapping whose pattern does not
/// compile maps nothing.
pub fn map_remote_roles(role_map: &[RoleMapping], remote_roles: &[String]) -> Vec<String> {
    let mut local: Vec<String> = Vec::new();
    for mapping in role_map {
        let Ok(pattern) = Pattern::compile(&mapping.remote) else {
            continue;
        };
        if remote_roles.iter().any(|r| pattern.matches(r)) {
            local.extend(mapping.local.iter().cloned());
        }
    }
    local.sort();
    local.dedup();
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(remote: &str, local: &[&str]) -> RoleMapping {
        RoleMapping {
            remote: remote.into(),
            local: local.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn roles_map_by_name_star_and_regex_and_unmapped_ones_are_dropped() {
        let map = vec![
            mapping("dev", &["leaf-dev"]),
            mapping("^ops-.*$", &["leaf-ops", "leaf-dev"]),
        ];
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(map_remote_roles(&map, &roles(&["dev"])), ["leaf-dev"]);
        assert_eq!(
            map_remote_roles(&map, &roles(&["ops-eu", "other"])),
            ["leaf-dev", "leaf-ops"]
        );
        assert!(map_remote_roles(&map, &roles(&["admin"])).is_empty());
        let star = vec![mapping("*", &["guest"])];
        assert_eq!(map_remote_roles(&star, &roles(&["x"])), ["guest"]);
        assert!(map_remote_roles(&star, &[]).is_empty());
        assert!(check_role_map(&[mapping("^(broken$", &["x"])]).is_err());
    }
}
