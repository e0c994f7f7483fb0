//! Reading the located manifest tree: typed accessors and key checks whose errors point at the
//! file, line and dotted key of the offending node.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::manifest::Node;

pub(super) fn err(node: &Node, key: &str, message: impl Into<String>) -> crate::error::Error {
    node.loc.error(key, message).into()
}

pub(super) fn table<'a>(node: &'a Node, key: &str) -> Result<&'a BTreeMap<String, Node>> {
    node.as_table().ok_or_else(|| {
        err(
            node,
            key,
            format!("expected a table, found {}", node.type_name()),
        )
    })
}

pub(super) fn string<'a>(node: &'a Node, key: &str) -> Result<&'a str> {
    node.as_str().ok_or_else(|| {
        err(
            node,
            key,
            format!("expected a string, found {}", node.type_name()),
        )
    })
}

pub(super) fn check_keys(t: &BTreeMap<String, Node>, allowed: &[&str], prefix: &str) -> Result<()> {
    for (k, v) in t {
        if !allowed.contains(&k.as_str()) {
            return Err(err(
                v,
                &join(prefix, k),
                format!("unknown key (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

pub(super) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `a, b, c`, or `none` (the caller's word for nothing) when the list is empty: the tail of every
/// "known: ..." hint in plan errors.
pub(super) fn list_or<S: AsRef<str>>(items: &[S], none: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
