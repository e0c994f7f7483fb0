//! Parameter values and their canonical encoding.
//!
//! A stage's parameters come from TOML but must hash the same however they were written: key order,
//! whitespace, comments and number spelling (`1e-3`, `0.001`, `1_000`) never change a key. The
//! canonical form here is what goes into a [`crate::key::StageKey`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// One parameter value. Tables keep their keys sorted (a `BTreeMap`), so iteration order is canonical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Value>),
    Table(BTreeMap<String, Value>),
}

/// A stage's resolved parameters: defaults filled in, names sorted.
pub type Params = BTreeMap<String, Value>;

impl Value {
    /// The type name used in error messages ("expected a float, found a string").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Integers widen to floats: `lr = 1` is accepted where a float is expected.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Appends the canonical encoding of `self` to `out`.
    ///
    /// - strings are JSON-quoted;
    /// - integers are plain decimal;
    /// - floats use the shortest representation that round-trips (Rust's `{:?}` for `f64`), with
    ///   `-0.0` folded into `0.0`, so `1e-3`, `0.001` and `1.0e-3` all encode as `0.001`;
    /// - a float is never equal to an integer (`1` and `1.0` are different parameters);
    /// - tables are sorted by key, arrays keep their order.
    pub fn write_canonical(&self, out: &mut String) {
        match self {
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => {
                let f = if *f == 0.0 { 0.0 } else { *f };
                // `{:?}` always prints a decimal point or exponent, so floats never look like ints.
                let _ = write!(out, "f{f:?}");
            }
            Value::Str(s) => out.push_str(&serde_json::to_string(s).expect("strings serialise")),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_canonical(out);
                }
                out.push(']');
            }
            Value::Table(map) => write_canonical_table(map, out),
        }
    }

    pub fn canonical(&self) -> String {
        let mut s = String::new();
        self.write_canonical(&mut s);
        s
    }
}

/// Canonical encoding of a table (sorted keys; see [`Value::write_canonical`]).
pub fn write_canonical_table(map: &BTreeMap<String, Value>, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).expect("strings serialise"));
        out.push(':');
        v.write_canonical(out);
    }
    out.push('}');
}

pub fn canonical_params(params: &Params) -> String {
    let mut s = String::new();
    write_canonical_table(params, &mut s);
    s
}

impl fmt::Display for Value {
    /// Human form, TOML-like, for `explain` and `show`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Value::Table(map) => {
                write!(f, "{{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k} = {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_spellings_share_one_encoding() {
        for f in [1e-3, 0.001, 1.0e-3, 0.0010] {
            assert_eq!(Value::Float(f).canonical(), "f0.001");
        }
        assert_eq!(
            Value::Float(-0.0).canonical(),
            Value::Float(0.0).canonical()
        );
        assert_ne!(Value::Float(1.0).canonical(), Value::Int(1).canonical());
    }

    #[test]
    fn tables_encode_sorted() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), Value::Int(1));
        a.insert("a".to_string(), Value::Str("x".into()));
        assert_eq!(Value::Table(a).canonical(), r#"{"a":"x","b":1}"#);
    }
}
