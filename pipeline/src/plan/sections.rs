//! The top-level sections of a manifest other than the stages: `store`, `datasets` and
//! `backbones` (external inputs), `[matrix]` axes and `[defaults.KIND]` parameters.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::fingerprint::Check;
use crate::manifest::{Loc, Node, NodeValue};
use crate::stage::StageRegistry;
use crate::value::Params;

use super::tree::*;
use super::*;

/// `store = "..."` or `[store] url = "..."`, parsed relative to the manifest's folder.
pub(super) fn store(top: &BTreeMap<String, Node>) -> Result<Option<StoreUrl>> {
    Ok(match top.get("store") {
        None => None,
        Some(node) => {
            let (url_node, key) = match &node.value {
                NodeValue::Str(_) => (node, "store".to_string()),
                NodeValue::Table(t) => {
                    check_keys(t, &["url"], "store")?;
                    let u = t
                        .get("url")
                        .ok_or_else(|| err(node, "store", "missing key `url`"))?;
                    (u, "store.url".to_string())
                }
                _ => {
                    return Err(err(
                        node,
                        "store",
                        format!("expected a table or a string, found {}", node.type_name()),
                    ))
                }
            };
            let url = string(url_node, &key)?;
            Some(
                StoreUrl::parse(url, url_node.loc.file.dir())
                    .map_err(|m| err(url_node, &key, m))?,
            )
        }
    })
}

/// `[datasets.NAME]` and `[backbones.NAME]`: external folders, in that order.
pub(super) fn externals(top: &BTreeMap<String, Node>) -> Result<Vec<External>> {
    let mut externals = Vec::new();
    for (group, path_key) in [("datasets", "root"), ("backbones", "weights")] {
        let Some(node) = top.get(group) else { continue };
        for (name, entry) in table(node, group)? {
            let prefix = format!("{group}.{name}");
            if !valid_name(name) {
                return Err(err(
                    entry,
                    &prefix,
                    "names may use letters, digits, `_` and `-` only",
                ));
            }
            let t = table(entry, &prefix)?;
            check_keys(
                t,
                &["kind", path_key, "params", "check", "immutable"],
                &prefix,
            )?;
            let kind = string(
                t.get("kind")
                    .ok_or_else(|| err(entry, &prefix, "missing key `kind`"))?,
                &format!("{prefix}.kind"),
            )?;
            let pnode = t.get(path_key).ok_or_else(|| {
                err(
                    entry,
                    &prefix,
                    format!("missing key `{path_key}` (a folder path)"),
                )
            })?;
            let rel = string(pnode, &format!("{prefix}.{path_key}"))?;
            let params = match t.get("params") {
                None => Params::new(),
                Some(p) => table(p, &format!("{prefix}.params"))?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            };
            externals.push(External {
                group: group.into(),
                name: name.clone(),
                kind: kind.into(),
                path: pnode.loc.file.dir().join(rel),
                params,
                check: check(t, &prefix)?,
            });
        }
    }
    Ok(externals)
}

/// `check = "files" | "folders"` or `immutable = true` of one external input.
fn check(t: &BTreeMap<String, Node>, prefix: &str) -> Result<Check> {
    let immutable = match t.get("immutable") {
        None => false,
        Some(n) => match n.value {
            NodeValue::Bool(b) => b,
            _ => {
                return Err(err(
                    n,
                    &format!("{prefix}.immutable"),
                    format!("expected true or false, found {}", n.type_name()),
                ))
            }
        },
    };
    let Some(node) = t.get("check") else {
        return Ok(if immutable {
            Check::Immutable
        } else {
            Check::Files
        });
    };
    let key = format!("{prefix}.check");
    if immutable {
        return Err(err(
            node,
            &key,
            "`immutable = true` checks nothing once fingerprinted: drop `check`, or `immutable`",
        ));
    }
    match string(node, &key)? {
        "files" => Ok(Check::Files),
        "folders" => Ok(Check::Folders),
        other => Err(err(
            node,
            &key,
            format!("unknown check `{other}` (expected `files` or `folders`)"),
        )),
    }
}

/// The `[matrix]` axes: name → (where declared, values).
pub(super) type Matrix = BTreeMap<String, (Loc, Vec<Node>)>;

/// `[matrix]`: every axis and its values, checked (non-empty, scalar, no duplicates).
pub(super) fn matrix(top: &BTreeMap<String, Node>) -> Result<Matrix> {
    let mut matrix = Matrix::new();
    if let Some(node) = top.get("matrix") {
        for (axis, values) in table(node, "matrix")? {
            let key = format!("matrix.{axis}");
            matrix.insert(
                axis.clone(),
                (
                    values.loc.clone(),
                    super::matrix::axis_values(values, &key)?,
                ),
            );
        }
    }
    Ok(matrix)
}

/// `[defaults.KIND]` tables by kind, of kinds the registry knows.
pub(super) type Defaults<'a> = BTreeMap<String, &'a BTreeMap<String, Node>>;

/// `[defaults.KIND]`: parameters every stage of a kind starts from.
pub(super) fn defaults<'a>(
    top: &'a BTreeMap<String, Node>,
    registry: &StageRegistry,
) -> Result<Defaults<'a>> {
    let mut defaults = Defaults::new();
    if let Some(node) = top.get("defaults") {
        for (kind, params) in table(node, "defaults")? {
            let key = format!("defaults.{kind}");
            if registry.get(kind).is_none() {
                return Err(err(params, &key, unknown_kind_message(kind, registry)));
            }
            defaults.insert(kind.clone(), table(params, &key)?);
        }
    }
    Ok(defaults)
}

/// `unknown stage kind `x` (known: ...)`.
pub(super) fn unknown_kind_message(kind: &str, registry: &StageRegistry) -> String {
    let known: Vec<&str> = registry.kinds().collect();
    format!("unknown stage kind `{kind}` (known: {})", known.join(", "))
}
