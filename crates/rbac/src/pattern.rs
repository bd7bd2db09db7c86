//! One value pattern, as written in label selectors and import-rule globs: a literal, a glob
//! where only `*` is special, or an anchored regular expression written as `^…$`.
//!
//! This is the only place that decides how such a value matches; selectors and import rules
//! both go through it so the same text means the same thing everywhere.

use regex::Regex;

/// A compiled value pattern.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// `*`: any value.
    Any,
    /// A value without `*` that is not `^…$`: compared as is.
    Literal(String),
    /// A glob (`prod-*`) or an anchored regular expression (`^db-[0-9]+$`).
    Regex(Regex),
}

impl Pattern {
    /// Compiles a pattern. Only a regular expression can fail; the error says why.
    pub fn compile(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        if text.len() >= 2 && text.starts_with('^') && text.ends_with('$') {
            // The author anchored it, so it is used as written.
            return Regex::new(text)
                .map(Pattern::Regex)
                .map_err(|e| format!("invalid regular expression {text:?}: {e}"));
        }
        if text.contains('*') {
            // Every other character is literal: `a.b*` must not match `axb`.
            let body = text
                .split('*')
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join(".*");
            return Regex::new(&format!("^(?s:{body})$"))
                .map(Pattern::Regex)
                .map_err(|e| format!("invalid glob {text:?}: {e}"));
        }
        Ok(Pattern::Literal(text.to_string()))
    }

    /// True when `value` matches the whole pattern.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Literal(l) => l == value,
            Pattern::Regex(re) => re.is_match(value),
        }
    }
}

/// True when any of `patterns` matches `value` (an empty list matches nothing).
pub fn any_matches(patterns: &[Pattern], value: &str) -> bool {
    patterns.iter().any(|p| p.matches(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_kinds_match_as_documented() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("prod", "prod", true),
            ("prod", "prod-1", false),
            ("prod-*", "prod-eu", true),
            ("prod-*", "prod-", true),
            ("prod-*", "xprod-eu", false),
            ("*-eu", "prod-eu", true),
            ("a.b*", "axbc", false),
            ("a.b*", "a.bc", true),
            ("^db-[0-9]+$", "db-12", true),
            ("^db-[0-9]+$", "db-12x", false),
            ("^db-[0-9]+$", "xdb-12", false),
            // A regex needs both anchors; otherwise it is a literal.
            ("^db", "^db", true),
            ("^db", "db", false),
            ("db$", "db$", true),
        ];
        for (pattern, value, expected) in cases {
            let p = Pattern::compile(pattern).unwrap();
            assert_eq!(p.matches(value), *expected, "{pattern:?} vs {value:?}");
        }
    }

    #[test]
    fn invalid_regex_is_an_error_naming_the_pattern() {
        let err = Pattern::compile("^db-[$").unwrap_err();
        assert!(err.contains("^db-[$"), "{err}");
    }

    #[test]
    fn empty_list_matches_nothing() {
        assert!(!any_matches(&[], "x"));
    }
}
