//! Reading YAML (and JSON, which is read as YAML flow syntax) with file and line numbers.
//!
//! Files are split into documents here, not by the YAML library, so that each document's first
//! line is known and every error can name `file:line`. Fields that the target types do not know
//! are collected (not dropped) and can be located afterwards, so callers decide whether a field
//! is an error or a warning.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};

use crate::ModelError;

/// One `---`-separated document of a file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Document<'a> {
    /// The document's text (with its `---` line, if any).
    pub text: &'a str,
    /// 1-based line in the file where `text` starts.
    pub first_line: usize,
}

impl Document<'_> {
    /// The file line of a 1-based line within this document.
    pub fn file_line(&self, doc_line: usize) -> usize {
        self.first_line + doc_line.saturating_sub(1)
    }

    /// True when the document holds nothing but blank lines, comments and markers.
    pub fn is_empty(&self) -> bool {
        self.text.lines().all(|line| {
            let t = line.trim();
            t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
        })
    }
}

/// Splits a file into documents at lines that start with `---`.
///
/// JSON text is returned as one document with tabs turned into spaces: tabs can only appear
/// between tokens in JSON (inside strings they are escaped), and YAML does not allow them there.
pub(crate) fn split_documents(text: &str) -> Vec<Document<'_>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return vec![Document {
            text,
            first_line: 1,
        }];
    }
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let is_marker = line.starts_with("---")
            && matches!(
                line.as_bytes().get(3),
                None | Some(b' ' | b'\t' | b'\r' | b'\n')
            );
        if is_marker && offset > start {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset;
            start_line = i + 1;
        }
        offset += line.len();
    }
    if start < text.len() || docs.is_empty() {
        docs.push(Document {
            text: &text[start..],
            first_line: start_line,
        });
    }
    docs
}

/// JSON read as YAML needs its tabs turned into spaces (see [`split_documents`]).
pub(crate) fn yaml_text<'a>(doc: &Document<'a>) -> std::borrow::Cow<'a, str> {
    let t = doc.text.trim_start();
    if (t.starts_with('{') || t.starts_with('[')) && doc.text.contains('\t') {
        std::borrow::Cow::Owned(doc.text.replace('\t', " "))
    } else {
        std::borrow::Cow::Borrowed(doc.text)
    }
}

/// Turns a YAML error into `file:line: message`.
pub(crate) fn yaml_error(file: &str, doc: &Document<'_>, err: &serde_yaml_ng::Error) -> ModelError {
    let line = err
        .location()
        .map(|l| doc.file_line(l.line()))
        .unwrap_or(doc.first_line);
    ModelError::Parse {
        file: file.to_string(),
        line,
        message: strip_location(&err.to_string()),
    }
}

/// Removes the ` at line N column M` parts the YAML library appends; the caller adds the file
/// line itself.
fn strip_location(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find(" at line ") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + " at line ".len()..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let after = &after[digits..];
        if let Some(col) = after.strip_prefix(" column ") {
            let digits = col.find(|c: char| !c.is_ascii_digit()).unwrap_or(col.len());
            rest = &col[digits..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path into a document, e.g. `spec.allow.logins`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
            use serde_ignored::Path;
            match path {
                Path::Root => {}
                Path::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Seg::Index(*index));
                }
                Path::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Seg::Key(key.clone()));
                }
                Path::Some { parent }
                | Path::NewtypeStruct { parent }
                | Path::NewtypeVariant { parent } => walk(parent, out),
            }
        }
        let mut segs = Vec::new();
        walk(path, &mut segs);
        FieldPath(segs)
    }

    /// The keys only, without sequence indices (for matching against field lists).
    pub fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .collect()
    }

    /// The last key.
    pub fn last_key(&self) -> &str {
        self.0
            .iter()
            .rev()
            .find_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .unwrap_or("")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Deserializes `T` from a document (or from element `index` of a top-level sequence),
/// returning the value and the paths of every field `T` did not consume, relative to the
/// document root.
pub(crate) fn decode<T: DeserializeOwned>(
    text: &str,
    index: Option<usize>,
) -> Result<(T, Vec<FieldPath>), serde_yaml_ng::Error> {
    let mut ignored = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let value = match index {
        None => {
            serde_ignored::deserialize(de, |path| ignored.push(FieldPath::from_ignored(&path)))?
        }
        Some(index) => {
            let value = de.deserialize_seq(NthElement::<T, _> {
                index,
                on_ignored: |path: &serde_ignored::Path<'_>| {
                    let mut p = FieldPath::from_ignored(path);
                    p.0.insert(0, Seg::Index(index));
                    ignored.push(p);
                },
                marker: PhantomData,
            })?;
            value.ok_or_else(|| {
                <serde_yaml_ng::Error as de::Error>::custom("sequence element not found")
            })?
        }
    };
    Ok((value, ignored))
}

/// Visits a sequence and deserializes only element `index` as `T`, reporting unused fields.
struct NthElement<T, F> {
    index: usize,
    on_ignored: F,
    marker: PhantomData<T>,
}

impl<'de, T, F> Visitor<'de> for NthElement<T, F>
where
    T: DeserializeOwned,
    F: FnMut(&serde_ignored::Path<'_>),
{
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of resources")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(None);
            }
        }
        let value = seq.next_element_seed(WithIgnored {
            on_ignored: &mut self.on_ignored,
            marker: PhantomData::<T>,
        })?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(value)
    }
}

/// Deserializes `T` through `serde_ignored`.
struct WithIgnored<'f, T, F> {
    on_ignored: &'f mut F,
    marker: PhantomData<T>,
}

impl<'de, T, F> DeserializeSeed<'de> for WithIgnored<'_, T, F>
where
    T: DeserializeOwned,
    F: FnMut(&serde_ignored::Path<'_>),
{
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        let on_ignored = self.on_ignored;
        serde_ignored::deserialize(deserializer, |path| on_ignored(&path))
    }
}

/// Marker error raised when the locator reaches the wanted key.
const FOUND: &str = "\u{0}dbward-located";

/// The 1-based line (within `text`) of the key at `path`, if it can be found.
///
/// Works by walking the document again and failing on purpose while the wanted key is being
/// read: the YAML library stamps that error with the key's position.
pub(crate) fn locate(text: &str, path: &FieldPath) -> Option<usize> {
    if path.0.is_empty() {
        return None;
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match (Locate { path: &path.0 }).deserialize(de) {
        Err(err) if err.to_string().contains(FOUND) => err.location().map(|l| l.line()),
        _ => None,
    }
}

struct Locate<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let wanted = matches!(self.path.first(), Some(Seg::Index(n)) if *n == i);
            let more = if wanted && self.path.len() > 1 {
                seq.next_element_seed(Locate {
                    path: &self.path[1..],
                })?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let wanted = match self.path.first() {
            Some(Seg::Key(k)) => Some(k.as_str()),
            _ => None,
        };
        let last = self.path.len() == 1;
        while let Some(matched) = map.next_key_seed(KeyProbe {
            wanted,
            fail_on_match: last,
        })? {
            if matched && !last {
                map.next_value_seed(Locate {
                    path: &self.path[1..],
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Reads a mapping key and tells whether it is the wanted one, or fails on it so that the
/// error carries the key's position.
struct KeyProbe<'k> {
    wanted: Option<&'k str>,
    fail_on_match: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        let matched = self.wanted == Some(v);
        if matched && self.fail_on_match {
            return Err(E::custom(FOUND));
        }
        Ok(matched)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_start_at_their_marker_line() {
        let text = "a: 1\n---\nb: 2\n\n--- \nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].first_line, 1);
        assert_eq!(docs[1].first_line, 2);
        assert_eq!(docs[2].first_line, 5);
        assert_eq!(docs[2].text, "--- \nc: 3\n");
    }

    #[test]
    fn a_leading_marker_does_not_make_an_empty_document() {
        let docs = split_documents("---\na: 1\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].first_line, 1);
    }

    #[test]
    fn locate_finds_nested_keys_and_list_elements() {
        let text = "spec:\n  allow:\n    logins: [root]\n  list:\n    - a: 1\n    - b: 2\n";
        let path = FieldPath(vec![
            Seg::Key("spec".into()),
            Seg::Key("allow".into()),
            Seg::Key("logins".into()),
        ]);
        assert_eq!(locate(text, &path), Some(3));
        let path = FieldPath(vec![
            Seg::Key("spec".into()),
            Seg::Key("list".into()),
            Seg::Index(1),
            Seg::Key("b".into()),
        ]);
        assert_eq!(locate(text, &path), Some(6));
        let missing = FieldPath(vec![Seg::Key("nope".into())]);
        assert_eq!(locate(text, &missing), None);
    }

    #[test]
    fn location_suffixes_are_removed_from_messages() {
        assert_eq!(
            strip_location(
                "spec: invalid type at line 3 column 5, while parsing at line 1 column 1"
            ),
            "spec: invalid type, while parsing"
        );
    }
}
