//! Grids: `[matrix]` axis values, their cartesian product, and `${axis}` templates substituted
//! into parameters and references.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Result;
use crate::manifest::{Node, NodeValue};
use crate::value::Value;

use super::tree::*;

pub(super) fn axis_values(node: &Node, key: &str) -> Result<Vec<Node>> {
    let NodeValue::Array(items) = &node.value else {
        return Err(err(
            node,
            key,
            format!(
                "expected a non-empty array of values, found {}",
                node.type_name()
            ),
        ));
    };
    if items.is_empty() {
        return Err(err(node, key, "expected a non-empty array of values"));
    }
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        match item.value {
            NodeValue::Array(_) | NodeValue::Table(_) => {
                return Err(err(
                    item,
                    &format!("{key}[{i}]"),
                    "axis values must be strings, numbers or booleans",
                ))
            }
            _ => {}
        }
        if !seen.insert(render(&item.to_value())) {
            return Err(err(
                item,
                &format!("{key}[{i}]"),
                format!("duplicate value {}", item.to_value()),
            ));
        }
    }
    Ok(items.clone())
}

/// How an axis value appears in instance names and in `${axis}` inside longer strings.
pub fn render(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        // `{:?}` keeps floats recognisable: `1.0`, `0.01`, `1e-5`.
        Value::Float(f) => format!("{f:?}"),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

pub(super) fn cartesian(axes: &[(String, Vec<Node>)]) -> Vec<Vec<Node>> {
    let mut out: Vec<Vec<Node>> = vec![Vec::new()];
    for (_, values) in axes {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for prefix in &out {
            for v in values {
                let mut row = prefix.clone();
                row.push(v.clone());
                next.push(row);
            }
        }
        out = next;
    }
    out
}

/// Replaces `${axis}` in strings (recursively). A string that is exactly `${axis}` takes the axis
/// value with its type, so `fraction = "${fraction}"` stays a float.
pub(super) fn substitute(
    node: &Node,
    bindings: &BTreeMap<String, Node>,
    key: &str,
) -> Result<Node> {
    match &node.value {
        NodeValue::Str(s) if s.contains("${") => {
            if let Some(axis) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                if !axis.contains('}') && !axis.contains("${") {
                    let v = bindings
                        .get(axis)
                        .ok_or_else(|| unbound(node, key, axis, bindings))?;
                    return Ok(Node {
                        value: v.value.clone(),
                        loc: node.loc.clone(),
                    });
                }
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| err(node, key, format!("unclosed `${{` in {s:?}")))?;
                let axis = &after[..end];
                let v = bindings
                    .get(axis)
                    .ok_or_else(|| unbound(node, key, axis, bindings))?;
                out.push_str(&render(&v.to_value()));
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Ok(Node {
                value: NodeValue::Str(out),
                loc: node.loc.clone(),
            })
        }
        NodeValue::Array(items) => Ok(Node {
            value: NodeValue::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| substitute(n, bindings, &format!("{key}[{i}]")))
                    .collect::<Result<_>>()?,
            ),
            loc: node.loc.clone(),
        }),
        NodeValue::Table(t) => Ok(Node {
            value: NodeValue::Table(
                t.iter()
                    .map(|(k, n)| Ok((k.clone(), substitute(n, bindings, &format!("{key}.{k}"))?)))
                    .collect::<Result<_>>()?,
            ),
            loc: node.loc.clone(),
        }),
        _ => Ok(node.clone()),
    }
}

pub(super) fn unbound(
    node: &Node,
    key: &str,
    axis: &str,
    bindings: &BTreeMap<String, Node>,
) -> crate::error::Error {
    let known: Vec<&str> = bindings.keys().map(String::as_str).collect();
    err(
        node,
        key,
        format!(
            "`${{{axis}}}` is not an axis of this stage's foreach (axes: {})",
            list_or(&known, "none")
        ),
    )
}
