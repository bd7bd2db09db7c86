//! Label selectors compiled for one dbward user: keys AND, values of one key OR, values are
//! literals, globs or `^regex$` (see [`crate::pattern`]), `"*": "*"` matches anything, and an
//! empty selector matches nothing.
//!
//! Templates in keys and values are expanded from the user's traits before compiling, so a
//! selector is built once per access check set and matching is plain comparison afterwards.

use std::collections::BTreeMap;

use dbward_model::Labels;

use crate::pattern::{any_matches, Pattern};
use crate::template::{Template, ROLE_NAMESPACES};

/// A user's traits, as read from the user resource.
pub type Traits = BTreeMap<String, Vec<String>>;

/// A compiled label selector.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector {
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Term {
    /// `"*": "*"`: satisfied by anything.
    Always,
    /// Every key must be present with a value matching one of the patterns. An empty key
    /// list (a key template that expanded to nothing) can never be satisfied.
    Keys {
        keys: Vec<String>,
        values: Vec<Pattern>,
    },
}

impl LabelSelector {
    /// Compiles `labels`, expanding templates from `traits`.
    pub fn compile(labels: &Labels, traits: &Traits) -> Result<LabelSelector, String> {
        let mut terms = Vec::with_capacity(labels.0.len());
        for (key, values) in labels.iter() {
            let values: &[String] = values;
            if key == "*" && values.iter().any(|v| v == "*") {
                terms.push(Term::Always);
                continue;
            }
            let keys = expand(key, traits)?;
            let mut patterns = Vec::new();
            for value in values {
                for expanded in expand(value, traits)? {
                    patterns.push(Pattern::compile(&expanded)?);
                }
            }
            terms.push(Term::Keys {
                keys,
                values: patterns,
            });
        }
        Ok(LabelSelector { terms })
    }

    /// Checks the syntax of every key and value without any traits: templates must parse
    /// and values without templates must compile.
    pub fn check_syntax(labels: &Labels) -> Result<(), String> {
        for (key, values) in labels.iter() {
            Template::parse(key, ROLE_NAMESPACES)?;
            for value in values {
                let template = Template::parse(value, ROLE_NAMESPACES)?;
                if template.is_literal() {
                    Pattern::compile(value)?;
                }
            }
        }
        Ok(())
    }

    /// True when the selector selects a resource with these labels.
    pub fn matches(&self, target: &BTreeMap<String, String>) -> bool {
        if self.terms.is_empty() {
            return false;
        }
        self.terms.iter().all(|term| match term {
            Term::Always => true,
            Term::Keys { keys, values } => {
                !keys.is_empty()
                    && keys.iter().all(|k| {
                        target
                            .get(k)
                            .is_some_and(|value| any_matches(values, value))
                    })
            }
        })
    }

    /// True when the selector has no key at all (and so matches nothing).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Expands one template from the user's traits; `internal` and `external` both read them.
pub fn expand(text: &str, traits: &Traits) -> Result<Vec<String>, String> {
    let template = Template::parse(text, ROLE_NAMESPACES)?;
    Ok(template.expand(&|_ns, name| traits.get(name).cloned().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str, traits: &Traits) -> LabelSelector {
        let labels: Labels = serde_yaml_ng::from_str(yaml).unwrap();
        LabelSelector::compile(&labels, traits).unwrap()
    }

    fn target(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_per_documented_rules() {
        let no_traits = Traits::new();
        let dev = target(&[("env", "dev"), ("team", "core")]);
        let prod_eu = target(&[("env", "prod-eu"), ("team", "core")]);
        let unlabelled = target(&[]);
        #[rustfmt::skip]
        let cases: &[(&str, &str, &BTreeMap<String, String>, bool)] = &[
            ("literal matches",             "{env: dev}",                 &dev, true),
            ("literal differs",             "{env: prod}",                &dev, false),
            ("missing key",                 "{region: eu}",               &dev, false),
            ("glob",                        "{env: 'prod-*'}",            &prod_eu, true),
            ("glob does not match prefix",  "{env: 'prod-*'}",            &dev, false),
            ("regex",                       "{env: '^prod-(eu|us)$'}",    &prod_eu, true),
            ("regex anchored",              "{env: '^prod$'}",            &prod_eu, false),
            ("value * needs the key",       "{env: '*'}",                 &unlabelled, false),
            ("value * with key",            "{env: '*'}",                 &dev, true),
            ("wildcard",                    "{'*': '*'}",                 &unlabelled, true),
            ("wildcard and a key: AND",     "{'*': '*', env: prod}",      &dev, false),
            ("values OR",                   "{env: [prod, dev]}",         &dev, true),
            ("values OR, none",             "{env: [prod, test]}",        &dev, false),
            ("keys AND, both",              "{env: dev, team: core}",     &dev, true),
            ("keys AND, one fails",         "{env: dev, team: other}",    &dev, false),
            ("empty selector",              "{}",                         &dev, false),
            ("empty selector, no labels",   "{}",                         &unlabelled, false),
            ("key with no values",          "{env: []}",                  &dev, false),
            ("teleport list form",          "[{name: env, values: [dev]}]", &dev, true),
        ];
        for (name, yaml, target, expected) in cases {
            assert_eq!(
                selector(yaml, &no_traits).matches(target),
                *expected,
                "{name}: {yaml}"
            );
        }
    }

    #[test]
    fn templates_in_keys_and_values_expand_from_traits() {
        let mut traits = Traits::new();
        traits.insert("envs".into(), vec!["dev".into(), "test".into()]);
        traits.insert("key".into(), vec!["env".into()]);
        let dev = target(&[("env", "dev")]);
        let prod = target(&[("env", "prod")]);
        assert!(selector("{env: '{{internal.envs}}'}", &traits).matches(&dev));
        assert!(!selector("{env: '{{internal.envs}}'}", &traits).matches(&prod));
        assert!(selector("{'{{internal.key}}': dev}", &traits).matches(&dev));
        // A missing trait leaves the key with no value, which never matches.
        assert!(!selector("{env: '{{internal.missing}}'}", &traits).matches(&dev));
        // A key template that expands to nothing never matches either, rather than
        // dropping the condition.
        assert!(!selector("{'{{internal.missing}}': dev}", &traits).matches(&dev));
    }

    #[test]
    fn check_syntax_reports_bad_regex_and_templates() {
        let bad: Labels = serde_yaml_ng::from_str("{env: '^(prod$'}").unwrap();
        assert!(LabelSelector::check_syntax(&bad).is_err());
        let bad: Labels = serde_yaml_ng::from_str("{env: '{{internal.x'}").unwrap();
        assert!(LabelSelector::check_syntax(&bad).is_err());
        let good: Labels = serde_yaml_ng::from_str("{env: ['^prod$', '{{internal.x}}']}").unwrap();
        assert!(LabelSelector::check_syntax(&good).is_ok());
    }
}
