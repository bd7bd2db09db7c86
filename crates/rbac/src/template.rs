//! Trait templates: `{{internal.db_roles}}`, `{{external.email}}`,
//! `{{email.local(external.email)}}`, `{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}`,
//! with literal text before and after the braces (`dev-{{internal.team}}-rw`). Whitespace
//! at the very start and end of a value with braces is dropped, as Teleport does.
//!
//! A template expands to zero or more values: one per value of the trait it reads. A missing
//! trait, an empty value, an address `email.local` cannot read and a value `regexp.replace`
//! does not match all expand to nothing, so a template can only ever narrow what a role
//! grants. Import rules reuse the same syntax with the `obj` namespace (`{{obj.schema}}`).
//! Syntax errors are found when the template is parsed, never while a connection waits.

use regex::Regex;

/// The namespaces role templates may read; both read the dbward user's traits.
pub const ROLE_NAMESPACES: &[&str] = &["internal", "external"];
/// The namespace import-rule templates read.
pub const OBJECT_NAMESPACES: &[&str] = &["obj"];

/// A parsed value: literal text, or literal text around one expression.
#[derive(Debug, Clone)]
pub struct Template {
    prefix: String,
    expr: Option<Expr>,
    suffix: String,
}

#[derive(Debug, Clone)]
enum Expr {
    Var { namespace: String, name: String },
    EmailLocal(Box<Expr>),
    RegexpReplace(Box<Expr>, Regex, String),
    Upper(Box<Expr>),
    Lower(Box<Expr>),
}

impl Template {
    /// Parses `text`. Variables must use one of `namespaces`.
    pub fn parse(text: &str, namespaces: &[&str]) -> Result<Template, String> {
        let Some(open) = text.find("{{") else {
            return Ok(Template {
                prefix: text.to_string(),
                expr: None,
                suffix: String::new(),
            });
        };
        let after_open = &text[open + 2..];
        let close = after_open
            .find("}}")
            .ok_or_else(|| format!("{text:?}: \"{{{{\" without a closing \"}}}}\""))?;
        let suffix = &after_open[close + 2..];
        if suffix.contains("{{") {
            return Err(format!(
                "{text:?}: only one {{{{…}}}} expression is allowed in a value"
            ));
        }
        let mut parser = Parser {
            src: &after_open[..close],
            pos: 0,
            namespaces,
        };
        let expr = parser
            .expr()
            .and_then(|e| parser.end().map(|()| e))
            .map_err(|e| format!("{text:?}: {e}"))?;
        // As in Teleport: whitespace before the literal prefix and after the literal suffix
        // of a template is not part of the value (`" {{internal.db_roles}} "` is `writer`).
        // Values without braces are kept as written.
        Ok(Template {
            prefix: text[..open].trim_start().to_string(),
            expr: Some(expr),
            suffix: suffix.trim_end().to_string(),
        })
    }

    /// True when the value has no `{{…}}` part.
    pub fn is_literal(&self) -> bool {
        self.expr.is_none()
    }

    /// The values this template stands for, given a lookup of `namespace.name`.
    /// Duplicates are removed; order follows the looked-up values.
    pub fn expand(&self, lookup: &dyn Fn(&str, &str) -> Vec<String>) -> Vec<String> {
        let Some(expr) = &self.expr else {
            return vec![self.prefix.clone()];
        };
        let mut out: Vec<String> = Vec::new();
        for value in expr.eval(lookup) {
            // An empty trait value stands for nothing, not for the bare prefix and suffix.
            if value.is_empty() {
                continue;
            }
            let full = format!("{}{}{}", self.prefix, value, self.suffix);
            if !out.contains(&full) {
                out.push(full);
            }
        }
        out
    }
}

impl Expr {
    fn eval(&self, lookup: &dyn Fn(&str, &str) -> Vec<String>) -> Vec<String> {
        match self {
            Expr::Var { namespace, name } => lookup(namespace, name),
            Expr::EmailLocal(inner) => inner
                .eval(lookup)
                .iter()
                .filter_map(|v| email_local(v))
                .collect(),
            Expr::RegexpReplace(inner, re, replacement) => inner
                .eval(lookup)
                .iter()
                .filter(|v| re.is_match(v))
                .map(|v| re.replace_all(v, replacement.as_str()).into_owned())
                .collect(),
            Expr::Upper(inner) => inner
                .eval(lookup)
                .iter()
                .map(|v| v.to_uppercase())
                .collect(),
            Expr::Lower(inner) => inner
                .eval(lookup)
                .iter()
                .map(|v| v.to_lowercase())
                .collect(),
        }
    }
}

/// The local part of `alice@example.com` or `Alice <alice@example.com>`; `None` when the
/// value is not an address.
fn email_local(value: &str) -> Option<String> {
    let mut addr = value.trim();
    if let (Some(lt), Some(gt)) = (addr.rfind('<'), addr.rfind('>')) {
        if lt < gt {
            addr = &addr[lt + 1..gt];
        }
    }
    let (local, domain) = addr.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || local.contains(char::is_whitespace) {
        return None;
    }
    Some(local.to_string())
}

/// Recursive-descent parser for the text between `{{` and `}}`.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    namespaces: &'a [&'a str],
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{c}' at position {}", self.pos))
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.skip_ws();
        match self.peek() {
            None => Ok(()),
            Some(c) => Err(format!("unexpected '{c}' at position {}", self.pos)),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        self.skip_ws();
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos {
            return Err(match self.peek() {
                Some(c) => format!("expected a name at position {start}, found '{c}'"),
                None => "expected a name, found the end of the expression".to_string(),
            });
        }
        Ok(self.src[start..self.pos].to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ ('"' | '`')) => q,
            _ => return Err(format!("expected a quoted string at position {}", self.pos)),
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self
                .peek()
                .ok_or_else(|| "unterminated string".to_string())?;
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(out);
            }
            if c == '\\' && quote == '"' {
                let next = self
                    .peek()
                    .ok_or_else(|| "unterminated string".to_string())?;
                self.pos += next.len_utf8();
                match next {
                    '"' | '\\' => out.push(next),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    // Keep other escapes for the regex engine (`\d`, `\.`).
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            } else {
                out.push(c);
            }
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut path = vec![self.ident()?];
        while self.eat('.') {
            path.push(self.ident()?);
        }
        if self.eat('(') {
            return self.call(&path.join("."));
        }
        if self.eat('[') {
            let name = self.string()?;
            self.expect(']')?;
            if path.len() != 1 {
                return Err(format!("unknown variable {}[{name:?}]", path.join(".")));
            }
            return self.var(path.remove(0), name);
        }
        if path.len() != 2 {
            return Err(format!(
                "unknown variable \"{}\", expected namespace.name",
                path.join(".")
            ));
        }
        let name = path.remove(1);
        self.var(path.remove(0), name)
    }

    fn var(&self, namespace: String, name: String) -> Result<Expr, String> {
        if !self.namespaces.contains(&namespace.as_str()) {
            return Err(format!(
                "unknown namespace \"{namespace}\", expected {}",
                self.namespaces.join(" or ")
            ));
        }
        if name.is_empty() {
            return Err(format!("empty variable name in namespace \"{namespace}\""));
        }
        Ok(Expr::Var { namespace, name })
    }

    fn call(&mut self, function: &str) -> Result<Expr, String> {
        let arg = Box::new(self.expr()?);
        let expr = match function {
            "email.local" => Expr::EmailLocal(arg),
            "strings.upper" => Expr::Upper(arg),
            "strings.lower" => Expr::Lower(arg),
            "regexp.replace" => {
                self.expect(',')?;
                let pattern = self.string()?;
                self.expect(',')?;
                let replacement = self.string()?;
                let re = Regex::new(&pattern)
                    .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))?;
                Expr::RegexpReplace(arg, re, replacement)
            }
            other => {
                return Err(format!(
                    "unknown function \"{other}\", expected email.local, regexp.replace, \
                     strings.upper or strings.lower"
                ))
            }
        };
        self.expect(')')?;
        Ok(expr)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn traits() -> BTreeMap<String, Vec<String>> {
        let mut t = BTreeMap::new();
        t.insert("email".into(), vec!["alice@example.com".into()]);
        t.insert(
            "groups".into(),
            vec!["db-readers".into(), "devs".into(), "db-writers".into()],
        );
        t.insert("db_roles".into(), vec!["reader".into(), "writer".into()]);
        t.insert("empty".into(), vec![String::new()]);
        t.insert("team-name".into(), vec!["core".into()]);
        t
    }

    fn expand(text: &str) -> Vec<String> {
        let traits = traits();
        let lookup = |_ns: &str, name: &str| traits.get(name).cloned().unwrap_or_default();
        Template::parse(text, ROLE_NAMESPACES)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .expand(&lookup)
    }

    #[test]
    fn templates_expand_from_traits() {
        let cases: &[(&str, &[&str])] = &[
            ("plain", &["plain"]),
            ("{{internal.db_roles}}", &["reader", "writer"]),
            ("{{external.db_roles}}", &["reader", "writer"]),
            ("{{ internal.db_roles }}", &["reader", "writer"]),
            (" {{internal.db_roles}} ", &["reader", "writer"]),
            ("\t {{internal.db_roles}}\n", &["reader", "writer"]),
            (
                " app-{{internal.db_roles}} -rw ",
                &["app-reader -rw", "app-writer -rw"],
            ),
            (" plain ", &[" plain "]),
            ("{{internal[\"team-name\"]}}", &["core"]),
            ("{{internal.team-name}}", &["core"]),
            (
                "app-{{internal.db_roles}}-rw",
                &["app-reader-rw", "app-writer-rw"],
            ),
            ("{{email.local(external.email)}}", &["alice"]),
            (
                r#"{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}"#,
                &["readers", "writers"],
            ),
            (
                r#"x-{{regexp.replace(external.groups, "^db-(.*)$", "$1")}}"#,
                &["x-readers", "x-writers"],
            ),
            (
                "{{strings.upper(internal.db_roles)}}",
                &["READER", "WRITER"],
            ),
            ("{{internal.missing}}", &[]),
            ("pre-{{internal.missing}}", &[]),
            ("{{internal.empty}}", &[]),
            ("{{email.local(internal.db_roles)}}", &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(expand(text), *expected, "{text}");
        }
    }

    #[test]
    fn email_local_reads_display_form_and_refuses_non_addresses() {
        assert_eq!(
            email_local("Alice <alice@example.com>"),
            Some("alice".into())
        );
        assert_eq!(email_local("alice"), None);
        assert_eq!(email_local("@example.com"), None);
        assert_eq!(email_local("alice@"), None);
    }

    #[test]
    fn bad_syntax_is_an_error() {
        let bad = [
            "{{internal.x",
            "{{}}",
            "{{internal}}",
            "{{internal.a.b}}",
            "{{secret.x}}",
            "{{obj.name}}",
            "{{internal.x}}{{internal.y}}",
            "{{email.local(internal.x}}",
            "{{regexp.replace(internal.x, \"(\", \"\")}}",
            "{{regexp.replace(internal.x, \"a\")}}",
            "{{nope.fn(internal.x)}}",
            "{{internal.x extra}}",
            "{{internal[\"x}}",
        ];
        for text in bad {
            assert!(
                Template::parse(text, ROLE_NAMESPACES).is_err(),
                "{text} should be refused"
            );
        }
    }

    #[test]
    fn object_namespace_is_separate() {
        let t = Template::parse("{{obj.schema}}", OBJECT_NAMESPACES).unwrap();
        let lookup = |ns: &str, name: &str| {
            if ns == "obj" && name == "schema" {
                vec!["public".to_string()]
            } else {
                vec![]
            }
        };
        assert_eq!(t.expand(&lookup), vec!["public"]);
        assert!(Template::parse("{{internal.x}}", OBJECT_NAMESPACES).is_err());
    }
}
