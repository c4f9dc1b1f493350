//! The tree the reader walks. A TOML file, an `SGW_*` environment override and a JSON
//! document (management API, state file) all become this tree, so one reader validates all
//! three; every value remembers where it came from, for its error messages.

use std::ops::Range;

use serde_json::{Map, Value};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where a value came from.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// A byte range of the file.
    File(Range<usize>),
    /// An `SGW_*` environment variable (its name).
    Env(String),
    /// A field of a document with no file position; the number orders its messages.
    Doc(usize),
}

#[derive(Debug)]
pub(crate) struct Node {
    pub origin: Origin,
    pub kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Str(String),
    /// `None`: an integer that does not fit 64 bits.
    Int(Option<i64>),
    Float,
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Entries),
    /// The text of an environment variable, typed by the key that reads it.
    Text(String),
}

impl Kind {
    /// The TOML name of the type, for "expected X, found Y".
    pub fn type_str(&self) -> &'static str {
        match self {
            Kind::Str(_) | Kind::Text(_) => "string",
            Kind::Int(_) => "integer",
            Kind::Float => "float",
            Kind::Bool(_) => "boolean",
            Kind::Datetime => "datetime",
            Kind::Array(_) => "array",
            Kind::Table(_) => "table",
        }
    }
}

/// A table's entries in document order.
#[derive(Debug, Default)]
pub(crate) struct Entries(pub Vec<Entry>);

#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_origin: Origin,
    pub value: Node,
}

impl Entries {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|e| e.key == key).map(|e| &e.value)
    }
}

/// A parsed TOML document as a tree.
pub(crate) fn from_toml(doc: &Spanned<DeTable<'_>>) -> Node {
    Node {
        origin: Origin::File(doc.span()),
        kind: Kind::Table(toml_entries(doc.get_ref())),
    }
}

fn toml_entries(t: &DeTable<'_>) -> Entries {
    Entries(
        t.iter()
            .map(|(k, v)| Entry {
                key: k.get_ref().to_string(),
                key_origin: Origin::File(k.span()),
                value: toml_node(v),
            })
            .collect(),
    )
}

fn toml_node(v: &Spanned<DeValue<'_>>) -> Node {
    let kind = match v.get_ref() {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => {
            Kind::Int(i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok())
        }
        DeValue::Float(_) => Kind::Float,
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(_) => Kind::Datetime,
        DeValue::Array(a) => Kind::Array(a.iter().map(toml_node).collect()),
        DeValue::Table(t) => Kind::Table(toml_entries(t)),
    };
    Node {
        origin: Origin::File(v.span()),
        kind,
    }
}

/// A JSON object as a tree; `null` means absent.
pub(crate) fn from_json(doc: &Map<String, Value>) -> Node {
    let mut order = 0;
    Node {
        origin: Origin::Doc(0),
        kind: Kind::Table(json_entries(doc, &mut order)),
    }
}

fn json_entries(m: &Map<String, Value>, order: &mut usize) -> Entries {
    Entries(
        m.iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                *order += 1;
                Entry {
                    key: k.clone(),
                    key_origin: Origin::Doc(*order),
                    value: json_node(v, order),
                }
            })
            .collect(),
    )
}

fn json_node(v: &Value, order: &mut usize) -> Node {
    *order += 1;
    let origin = Origin::Doc(*order);
    let kind = match v {
        Value::String(s) => Kind::Str(s.clone()),
        Value::Number(n) if n.is_i64() => Kind::Int(n.as_i64()),
        Value::Number(n) if n.is_u64() => Kind::Int(None),
        Value::Number(_) => Kind::Float,
        Value::Bool(b) => Kind::Bool(*b),
        Value::Array(a) => Kind::Array(
            a.iter()
                .filter(|x| !x.is_null())
                .map(|x| json_node(x, order))
                .collect(),
        ),
        Value::Object(m) => Kind::Table(json_entries(m, order)),
        // Filtered out above; an absent value reads as an empty table's.
        Value::Null => Kind::Table(Entries::default()),
    };
    Node { origin, kind }
}
