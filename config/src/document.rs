//! A TOML document as a tree in which every key and every value keeps its
//! byte span in the source text.
//!
//! Owns: turning TOML text into [`Item`]s. Guarantees: every [`Entry`] knows
//! the span of its key and of its value, so any later check can point at the
//! line that caused it; syntax errors carry the span the TOML parser reported.
//!
//! Why a generic tree rather than `#[derive(Deserialize)]` schema structs:
//! serde stops at the first error, and the configuration must report every
//! problem at once with its line. The schema walk in `crate::read` reads this
//! tree by hand and collects errors as it goes.
//!
//! Spans come from `toml`'s support for `serde_spanned::Spanned`: the TOML
//! deserializer recognises the `Spanned` request (a struct with the private
//! name and fields that `serde_spanned::__unstable` exports) and answers with
//! the start, end and value. Keys are requested the same way but also accept a
//! bare string, because the datetime map that `toml` produces for a datetime
//! value has a key without a span.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_spanned::__unstable as spanned;
use serde_spanned::Spanned;

/// The name `toml` gives the single key of the map it produces for a datetime.
const DATETIME_KEY: &str = "$__toml_private_datetime";

/// A value with the byte span it occupies in the source.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Item {
    pub(crate) span: Range<usize>,
    pub(crate) node: Node,
}

/// One `key = value` pair of a table (or a `[table]` / `[[array]]` header).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_span: Range<usize>,
    pub(crate) item: Item,
}

/// A TOML value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Datetime(String),
    Array(Vec<Item>),
    Table(Vec<Entry>),
}

impl Node {
    /// The TOML type name, for "expected X, found Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Bool(_) => "a boolean",
            Node::Integer(_) => "an integer",
            Node::Float(_) => "a float",
            Node::String(_) => "a string",
            Node::Datetime(_) => "a datetime",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }
}

/// A TOML syntax error: the parser's message and the span it points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) span: Option<Range<usize>>,
    pub(crate) message: String,
}

/// Parses `text` into the root table's entries.
pub(crate) fn parse(text: &str) -> Result<Vec<Entry>, SyntaxError> {
    let root: Root = toml::from_str(text).map_err(|e| {
        // One error is one line of output: fold the parser's multi-line
        // message ("invalid table header\nexpected `.`, `]`").
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        SyntaxError {
            span: e.span(),
            // The parser gives no message for some truncated input (`id = `
            // at the end of the file).
            message: if message.is_empty() {
                "invalid or incomplete TOML".to_string()
            } else {
                message
            },
        }
    })?;
    Ok(root.0)
}

/// The document root: a table whose own span is not needed.
struct Root(Vec<Entry>);

impl<'de> Deserialize<'de> for Root {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_any(NodeVisitor)? {
            Node::Table(entries) => Ok(Root(entries)),
            other => Err(de::Error::custom(format!(
                "expected a table at the top level, found {}",
                other.kind()
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<NodeValue>::deserialize(deserializer)?;
        let span = spanned.span();
        Ok(Item {
            span,
            node: spanned.into_inner().0,
        })
    }
}

/// A [`Node`] deserialized through `deserialize_any`.
struct NodeValue(Node);

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor).map(NodeValue)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Integer)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Item>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key.span.is_none() && key.name == DATETIME_KEY {
                let text: String = map.next_value()?;
                return Ok(Node::Datetime(text));
            }
            let item: Item = map.next_value()?;
            // A key without its own span points at its value, which is on the
            // same line in every TOML layout.
            let key_span = key.span.unwrap_or_else(|| item.span.clone());
            entries.push(Entry {
                key: key.name,
                key_span,
                item,
            });
        }
        Ok(Node::Table(entries))
    }
}

/// A table key and, when the deserializer knows it, its span.
struct Key {
    name: String,
    span: Option<Range<usize>>,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        const FIELDS: &[&str] = &[
            spanned::START_FIELD,
            spanned::END_FIELD,
            spanned::VALUE_FIELD,
        ];
        deserializer.deserialize_struct(spanned::NAME, FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_string(),
            span: None,
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key, E> {
        Ok(Key {
            name: v,
            span: None,
        })
    }

    /// The spanned form: `{ start, end, value }`, as `serde_spanned` reads it.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let mut start = None;
        let mut end = None;
        let mut name = None;
        while let Some(field) = map.next_key::<String>()? {
            if field == spanned::START_FIELD {
                start = Some(map.next_value::<usize>()?);
            } else if field == spanned::END_FIELD {
                end = Some(map.next_value::<usize>()?);
            } else if field == spanned::VALUE_FIELD {
                name = Some(map.next_value::<String>()?);
            } else {
                return Err(de::Error::unknown_field(&field, &[]));
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field(spanned::VALUE_FIELD))?;
        let span = match (start, end) {
            (Some(s), Some(e)) => Some(s..e),
            _ => None,
        };
        Ok(Key { name, span })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str, offset: usize) -> usize {
        text[..offset].matches('\n').count() + 1
    }

    #[test]
    fn keys_and_values_keep_their_lines() {
        let text = "[cluster]\nvips = [\"10.0.0.1\"]\n\n[[host]]\nid = 1\n[host.cores]\ncontrol = 2\n[[host]]\nid = 2\nwhen = 1979-05-27\n";
        let root = parse(text).unwrap();
        assert_eq!(root.len(), 2);
        let cluster = &root[0];
        assert_eq!(cluster.key, "cluster");
        let Node::Table(c) = &cluster.item.node else {
            panic!("cluster is not a table")
        };
        assert_eq!(c[0].key, "vips");
        assert_eq!(line_of(text, c[0].key_span.start), 2);
        assert_eq!(line_of(text, c[0].item.span.start), 2);
        let Node::Array(hosts) = &root[1].item.node else {
            panic!("host is not an array")
        };
        assert_eq!(hosts.len(), 2);
        let Node::Table(h1) = &hosts[0].node else {
            panic!("host[1] is not a table")
        };
        assert_eq!(line_of(text, h1[0].key_span.start), 5);
        let Node::Table(cores) = &h1[1].item.node else {
            panic!("cores is not a table")
        };
        assert_eq!(line_of(text, cores[0].key_span.start), 7);
        let Node::Table(h2) = &hosts[1].node else {
            panic!("host[2] is not a table")
        };
        assert_eq!(h2[1].item.node, Node::Datetime("1979-05-27".into()));
        assert_eq!(line_of(text, h2[1].key_span.start), 10);
    }

    #[test]
    fn syntax_errors_have_a_span() {
        let text = "[cluster]\nvips = [\n";
        let err = parse(text).unwrap_err();
        assert!(err.span.is_some());
    }
}
