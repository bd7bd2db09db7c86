//! The one place that quotes PostgreSQL identifiers and checks names before they reach SQL.
//!
//! Statements sent by the provisioner quote in SQL with `format('%I')`; this helper is for
//! the statements dbward *prints* (preflight fixes, error hints), which a person pastes into
//! psql. Values are never quoted: they travel as bound parameters.

use crate::error::ProvisionError;
use crate::names::PG_MAX_NAME_BYTES;

/// `name` as a double-quoted identifier, with embedded double quotes doubled. Always quoted,
/// so case, spaces, unicode and keywords survive.
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Checks that `name` can name a role without PostgreSQL changing it: not empty, no NUL
/// byte, and not longer than 63 bytes (PostgreSQL would silently truncate it, and a
/// truncated name can alias another role).
pub(crate) fn check_role_name(name: &str) -> Result<(), ProvisionError> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.contains('\0') {
        "the name contains a NUL character"
    } else if name.len() > PG_MAX_NAME_BYTES {
        "the name is longer than 63 bytes"
    } else {
        return Ok(());
    };
    Err(ProvisionError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Checks a name for a user dbward would create: a valid role name that PostgreSQL does not
/// reserve (`pg_` prefix).
pub(crate) fn check_user_name(name: &str) -> Result<(), ProvisionError> {
    check_role_name(name)?;
    if name.starts_with("pg_") {
        return Err(ProvisionError::InvalidName {
            name: name.to_owned(),
            reason: "names starting with \"pg_\" are reserved by PostgreSQL",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_still_quoted() {
        assert_eq!(quote_ident("reader"), "\"reader\"");
    }

    #[test]
    fn embedded_double_quotes_are_doubled() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("\""), "\"\"\"\"");
    }

    #[test]
    fn spaces_single_quotes_and_unicode_pass_through() {
        assert_eq!(quote_ident("o'brien ü 名"), "\"o'brien ü 名\"");
    }

    #[test]
    fn sql_in_a_name_stays_inside_the_identifier() {
        let quoted = quote_ident("x\"; DROP ROLE postgres; --");
        assert_eq!(quoted, "\"x\"\"; DROP ROLE postgres; --\"");
        // The only unescaped quotes are the outer ones.
        let inner = &quoted[1..quoted.len() - 1];
        assert!(inner.replace("\"\"", "").find('"').is_none());
    }

    #[test]
    fn names_that_postgres_would_change_are_refused() {
        assert!(check_role_name("").is_err());
        assert!(check_role_name("a\0b").is_err());
        assert!(check_role_name(&"a".repeat(64)).is_err());
        assert!(check_role_name(&"a".repeat(63)).is_ok());
        // 22 three-byte characters: 66 bytes.
        assert!(check_role_name(&"名".repeat(22)).is_err());
    }

    #[test]
    fn reserved_pg_prefix_is_refused_for_users_only() {
        assert!(check_user_name("pg_monitor").is_err());
        assert!(check_role_name("pg_monitor").is_ok());
        assert!(check_user_name("alice").is_ok());
    }
}
