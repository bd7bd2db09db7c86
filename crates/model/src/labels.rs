//! Label selectors as written in resources: a map from key to one value or a list of values.
//!
//! `env: dev` and `env: [dev, test]` are both accepted and kept in the form they were written,
//! so that a resource read and written again looks the same. Teleport's list form
//! (`- name: env` / `values: [dev]`, used by import rules) is accepted as well.
//! Matching lives in the rbac crate; this module only holds the data.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// The values a selector accepts for one key: written as a scalar or as a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelValues {
    /// `env: dev`
    One(String),
    /// `env: [dev, test]`
    Many(Vec<String>),
}

impl LabelValues {
    /// The values as a slice, whatever form they were written in.
    pub fn values(&self) -> &[String] {
        match self {
            LabelValues::One(v) => std::slice::from_ref(v),
            LabelValues::Many(vs) => vs,
        }
    }
}

impl From<Vec<String>> for LabelValues {
    fn from(values: Vec<String>) -> Self {
        if values.len() == 1 {
            // A single value reads best as a scalar.
            let mut values = values;
            LabelValues::One(values.remove(0))
        } else {
            LabelValues::Many(values)
        }
    }
}

/// A label selector: every key must match (AND), any value of a key may match (OR).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels(pub BTreeMap<String, LabelValues>);

impl Labels {
    /// An empty selector (which matches nothing).
    pub fn new() -> Self {
        Labels::default()
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The selector `"*": "*"`, which matches every labelled thing.
    pub fn wildcard() -> Self {
        Labels::new().with("*", "*")
    }

    /// Adds a key with one value (builder style, for code and tests).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.0
            .insert(key.to_string(), LabelValues::One(value.to_string()));
        self
    }

    /// Iterates keys with their accepted values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.values()))
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, values) in &self.0 {
            match values {
                LabelValues::One(v) => map.serialize_entry(key, v)?,
                LabelValues::Many(vs) => map.serialize_entry(key, vs)?,
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for LabelValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;
        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = LabelValues;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a label value or a list of label values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LabelValues::One(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LabelValues::One(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LabelValues::One(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LabelValues::One(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LabelValues::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<ScalarString>()? {
                    values.push(v.0);
                }
                Ok(LabelValues::Many(values))
            }
        }
        deserializer.deserialize_any(ValuesVisitor)
    }
}

/// One entry of Teleport's list form: `{name: env, values: [dev]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedLabel {
    name: String,
    #[serde(default, deserialize_with = "string_list")]
    values: Vec<String>,
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of label keys to values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Labels::new())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut labels = BTreeMap::new();
                while let Some(key) = map.next_key::<ScalarString>()? {
                    let values: LabelValues = map.next_value()?;
                    labels.insert(key.0, values);
                }
                Ok(Labels(labels))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut labels = BTreeMap::new();
                while let Some(entry) = seq.next_element::<NamedLabel>()? {
                    labels.insert(entry.name, LabelValues::from(entry.values));
                }
                Ok(Labels(labels))
            }
        }
        deserializer.deserialize_any(LabelsVisitor)
    }
}

/// A string that may have been written as a YAML number or boolean (`version: 14`).
pub(crate) struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Reads a list of strings that may also be written as a single string (`db_users: app`),
/// as Teleport accepts. Null reads as an empty list.
pub(crate) fn string_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    match Option::<LabelValues>::deserialize(deserializer)? {
        None => Ok(Vec::new()),
        Some(LabelValues::One(v)) => Ok(vec![v]),
        Some(LabelValues::Many(vs)) => Ok(vs),
    }
}

/// Reads a map of string to string that may be null.
pub(crate) fn string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct MapVisitor;
    impl<'de> Visitor<'de> for MapVisitor {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<ScalarString>()? {
                let value: ScalarString = map.next_value()?;
                out.insert(key.0, value.0);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(MapVisitor)
}

/// Reads a map of string to list of strings (user traits), each value one-or-many.
pub(crate) fn string_list_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    // `tctl get users` writes traits without values as `null`: they hold nothing.
    let map = BTreeMap::<String, Option<LabelValues>>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| {
            let values = match v? {
                LabelValues::One(v) => vec![v],
                LabelValues::Many(vs) => vs,
            };
            Some((k, values))
        })
        .collect())
}
