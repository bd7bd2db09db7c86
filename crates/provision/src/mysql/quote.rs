//! Quoting for MariaDB statements that cannot take bound parameters (account and role
//! names), and the checks that refuse names no quoting makes safe.
//!
//! Identifiers are backtick-quoted (a backtick doubled), which MariaDB reads the same in
//! every `sql_mode`. String literals double the single quote; backslashes, whose meaning
//! depends on `NO_BACKSLASH_ESCAPES`, are refused in names before any SQL is built.

use crate::error::ProvisionError;

/// `` `name` `` with backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `` `name`@`%` ``: the account of a provisioned user.
pub fn quote_account(name: &str) -> String {
    format!("{}@`%`", quote_ident(name))
}

/// `'value'` with single quotes doubled. Only for values already checked free of
/// backslashes and control characters.
pub fn quote_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The `REQUIRE SUBJECT` string literal for a db-client certificate `CN=<name>`: the subject
/// as MariaDB reads it from the certificate (OpenSSL's one-line form, which escapes `/`, `+`
/// and non-ASCII bytes with backslashes), quoted for a session with backslash escapes on.
pub fn subject_literal(name: &str) -> String {
    let subject = dbward_pki::x509_oneline_subject(name);
    format!("'{}'", subject.replace('\\', "\\\\").replace('\'', "''"))
}

fn check(name: &str, max_chars: usize) -> Result<(), ProvisionError> {
    let invalid = |reason| ProvisionError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.chars().count() > max_chars {
        return Err(invalid("the name is too long for MariaDB"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(invalid(
            "control characters and backslashes are not allowed",
        ));
    }
    // A slash is allowed (standard base64 in hashed names has them): the subject is matched
    // as the string `/CN=<name>`, and dbward's db-client CA only issues CN-only subjects, so
    // no certificate can present another field there.
    Ok(())
}

/// Refuses user names MariaDB would truncate or that cannot be quoted safely.
pub(crate) fn check_user_name(name: &str) -> Result<(), ProvisionError> {
    check(name, super::MARIADB_MAX_USER_CHARS)
}

/// Refuses role names MariaDB would truncate or that cannot be quoted safely.
pub(crate) fn check_role_name(name: &str) -> Result<(), ProvisionError> {
    check(name, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_strings_are_quoted() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_account("o'brien"), "`o'brien`@`%`");
        assert_eq!(quote_string("/CN=o'brien"), "'/CN=o''brien'");
        assert_eq!(subject_literal("a/b+c"), "'/CN=a\\\\/b\\\\+c'");
        assert_eq!(subject_literal("o'ü"), "'/CN=o''\\\\xC3\\\\xBC'");
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["", "a\\b", "a\nb", &"x".repeat(81)] {
            assert!(check_user_name(name).is_err(), "{name:?}");
        }
        for name in [
            "alice",
            "o'brien",
            "ünï cødé",
            "a/b+c",
            "x`; drop user root; --",
        ] {
            assert!(check_user_name(name).is_ok(), "{name:?}");
        }
    }
}
