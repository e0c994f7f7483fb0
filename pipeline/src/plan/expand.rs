//! Stages → instances: each `[stages.NAME]` expanded over its `foreach` grid, its parameters
//! resolved (defaults, then templates, then types; runner parameters kept apart), and with
//! `shards = N` split into N shard instances plus the merge under the stage's own name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Result;
use crate::manifest::{Node, NodeValue};
use crate::stage::{
    parse_duration, parse_memory, parse_threads, Limits, Sharding, Stage, StageRegistry,
    SHARDS_SLOT,
};
use crate::value::{Params, Value};

use super::matrix::{axis_values, cartesian, render, substitute};
use super::sections::{unknown_kind_message, Defaults, Matrix};
use super::tree::*;
use super::{Instance, Part, MAX_SHARDS, STAGE_KEYS};

/// Where an instance was declared, kept until its inputs are bound (errors point there).
pub(super) struct Pending<'a> {
    pub node: &'a Node,
    pub prefix: String,
    pub bindings: BTreeMap<String, Node>,
    pub inputs: Option<&'a Node>,
}

/// Every instance of a manifest in declaration order, inputs not bound yet.
pub(super) struct Expanded<'a> {
    pub instances: Vec<Instance>,
    /// One per instance, in the same order.
    pub pending: Vec<Pending<'a>>,
    /// Each merge instance and its shards, in shard order.
    pub merges: Vec<(usize, Vec<usize>)>,
}

/// One `[stages.NAME]` as declared: what its instances are expanded from.
struct Declared<'a> {
    name: &'a str,
    node: &'a Node,
    table: &'a BTreeMap<String, Node>,
    prefix: String,
    kind: String,
    stage: &'a Arc<dyn Stage>,
}

/// Expands every stage into instances; inputs are bound once all instances exist.
pub(super) fn stages<'a>(
    top: &'a BTreeMap<String, Node>,
    matrix: &Matrix,
    defaults: &Defaults<'a>,
    registry: &'a StageRegistry,
) -> Result<Expanded<'a>> {
    let mut out = Expanded {
        instances: Vec::new(),
        pending: Vec::new(),
        merges: Vec::new(),
    };
    let Some(stages) = top.get("stages") else {
        return Ok(out);
    };
    for (stage_name, node) in table(stages, "stages")? {
        let declared = declare(stage_name, node, registry)?;
        let axes = foreach_axes(&declared, matrix)?;
        let shards = parse_shards(&declared, registry)?;
        for combo in cartesian(&axes) {
            expand_point(
                &mut out,
                &declared,
                &axes,
                &combo,
                defaults,
                shards.as_ref(),
            )?;
        }
    }
    Ok(out)
}

/// Checks a stage's name, keys and kind.
fn declare<'a>(
    stage_name: &'a String,
    node: &'a Node,
    registry: &'a StageRegistry,
) -> Result<Declared<'a>> {
    let prefix = format!("stages.{stage_name}");
    if !valid_name(stage_name) {
        return Err(err(
            node,
            &prefix,
            "stage names may use letters, digits, `_` and `-` only",
        ));
    }
    let t = table(node, &prefix)?;
    check_keys(t, STAGE_KEYS, &prefix)?;
    let kind = match t.get("kind") {
        Some(k) => string(k, &format!("{prefix}.kind"))?.to_string(),
        None => stage_name.clone(),
    };
    let Some(stage) = registry.get(&kind) else {
        let at = t.get("kind").unwrap_or(node);
        return Err(err(
            at,
            &format!("{prefix}.kind"),
            unknown_kind_message(&kind, registry),
        ));
    };
    Ok(Declared {
        name: stage_name,
        node,
        table: t,
        prefix,
        kind,
        stage,
    })
}

/// The grid of a stage: (axis, values) in `foreach` order (named `[matrix]` axes or inline ones).
fn foreach_axes(declared: &Declared, matrix: &Matrix) -> Result<Vec<(String, Vec<Node>)>> {
    let Declared {
        table: t, prefix, ..
    } = declared;
    let mut axes: Vec<(String, Vec<Node>)> = Vec::new();
    if let Some(fe) = t.get("foreach") {
        let key = format!("{prefix}.foreach");
        match &fe.value {
            NodeValue::Array(names) => {
                for (i, n) in names.iter().enumerate() {
                    let axis = string(n, &format!("{key}[{i}]"))?;
                    let Some((_, values)) = matrix.get(axis) else {
                        let known: Vec<&str> = matrix.keys().map(String::as_str).collect();
                        return Err(err(
                            n,
                            &format!("{key}[{i}]"),
                            format!(
                                "unknown axis `{axis}` (the [matrix] table declares: {})",
                                list_or(&known, "nothing")
                            ),
                        ));
                    };
                    if axes.iter().any(|(a, _)| a == axis) {
                        return Err(err(
                            n,
                            &format!("{key}[{i}]"),
                            format!("axis `{axis}` is listed twice"),
                        ));
                    }
                    axes.push((axis.to_string(), values.clone()));
                }
            }
            NodeValue::Table(inline) => {
                for (axis, values) in inline {
                    axes.push((axis.clone(), axis_values(values, &format!("{key}.{axis}"))?));
                }
            }
            _ => {
                return Err(err(
                    fe,
                    &key,
                    format!(
                        "expected an array of axis names or a table of axis values, found {}",
                        fe.type_name()
                    ),
                ))
            }
        }
    }
    Ok(axes)
}

/// One point of a stage's grid: its instance, or its shards and their merge.
fn expand_point<'a>(
    out: &mut Expanded<'a>,
    declared: &Declared<'a>,
    axes: &[(String, Vec<Node>)],
    combo: &[Node],
    defaults: &Defaults,
    shards: Option<&(Sharding, u32)>,
) -> Result<()> {
    let Declared {
        name: stage_name,
        node,
        table: t,
        prefix,
        kind,
        stage,
    } = declared;
    let node = *node;
    let bindings: BTreeMap<String, Node> = axes
        .iter()
        .map(|(a, _)| a.clone())
        .zip(combo.iter().cloned())
        .collect();
    let axis_values: Vec<(String, Value)> = axes
        .iter()
        .map(|(a, _)| a.clone())
        .zip(combo.iter().map(Node::to_value))
        .collect();
    let name = if axis_values.is_empty() {
        stage_name.to_string()
    } else {
        let parts: Vec<String> = axis_values
            .iter()
            .map(|(a, v)| format!("{a}={}", render(v)))
            .collect();
        format!("{stage_name}[{}]", parts.join(","))
    };
    let (params, limits, threads) = instance_params(declared, &name, &bindings, defaults, shards)?;
    let mut part = Part::Whole;
    if let Some((sharding, count)) = shards {
        // N shard instances, then the merge under the stage's own name.
        let mut shard_indices = Vec::new();
        for index in 0..*count {
            let mut shard_params = params.clone();
            shard_params.insert(
                sharding.param.to_string(),
                Value::Str(format!("{index}/{count}")),
            );
            let shard_name = match name.strip_suffix(']') {
                Some(open) => format!("{open},shard={index}/{count}]"),
                None => format!("{name}[shard={index}/{count}]"),
            };
            if let Err(m) = stage.validate(&shard_params) {
                let at = t.get("shards").unwrap_or(node);
                return Err(err(
                    at,
                    &format!("{prefix}.shards"),
                    format!("{shard_name}: {m}"),
                ));
            }
            shard_indices.push(out.instances.len());
            out.instances.push(Instance {
                name: shard_name,
                stage: stage_name.to_string(),
                kind: kind.clone(),
                axes: axis_values.clone(),
                params: shard_params,
                inputs: BTreeMap::new(),
                part: Part::Shard {
                    index,
                    count: *count,
                },
                limits,
                threads,
            });
            out.pending.push(Pending {
                node,
                prefix: prefix.clone(),
                bindings: bindings.clone(),
                inputs: t.get("inputs"),
            });
        }
        out.merges.push((out.instances.len(), shard_indices));
        part = Part::Merge { count: *count };
    }
    out.instances.push(Instance {
        name,
        stage: stage_name.to_string(),
        kind: kind.clone(),
        axes: axis_values,
        params,
        inputs: BTreeMap::new(),
        part,
        limits,
        threads,
    });
    out.pending.push(Pending {
        node,
        prefix: prefix.clone(),
        bindings,
        inputs: t.get("inputs"),
    });
    Ok(())
}

/// An instance's parameters: `[defaults.KIND]` under `[stages.NAME].params`, then `${axis}`
/// templates, then types and defaults from the kind's declaration. The runner parameters come back
/// apart: `timeout`, `watchdog` and `memory` as [`Limits`], so they never reach the key, and `threads`, which
/// `resolve` adds to the key where it matters.
fn instance_params(
    declared: &Declared,
    name: &str,
    bindings: &BTreeMap<String, Node>,
    defaults: &Defaults,
    shards: Option<&(Sharding, u32)>,
) -> Result<(Params, Limits, Option<usize>)> {
    let Declared {
        node,
        table: t,
        prefix,
        kind,
        stage,
        ..
    } = declared;
    let node = *node;
    let specs = stage.params();
    // Parameters: [defaults.KIND] under [stages.NAME].params, then templates, then types.
    let mut raw: BTreeMap<String, (Node, String)> = BTreeMap::new();
    if let Some(d) = defaults.get(kind.as_str()) {
        for (k, v) in d.iter() {
            raw.insert(k.clone(), (v.clone(), format!("defaults.{kind}.{k}")));
        }
    }
    if let Some(p) = t.get("params") {
        for (k, v) in table(p, &format!("{prefix}.params"))? {
            raw.insert(k.clone(), (v.clone(), format!("{prefix}.params.{k}")));
        }
    }
    if let Some((sharding, _)) = shards {
        if let Some((node, key)) = raw.get(sharding.param) {
            return Err(err(
                node,
                key,
                format!(
                    "`{prefix}.shards` sets parameter `{}` of each shard; do not set it too",
                    sharding.param
                ),
            ));
        }
    }
    let mut params = Params::new();
    let mut limits = Limits::default();
    let mut threads = None;
    for (k, (node, key)) in &raw {
        if k == "threads" {
            let value = substitute(node, bindings, key)?.to_value();
            threads = Some(parse_threads(&value).map_err(|m| err(node, key, m))?);
            continue;
        }
        // Runner parameters are read here and kept out of `params`, so out of the key.
        if k == "memory" {
            let value = substitute(node, bindings, key)?.to_value();
            limits.memory = Some(parse_memory(&value).map_err(|m| err(node, key, m))?);
            continue;
        }
        if k == "timeout" || k == "watchdog" {
            let value = substitute(node, bindings, key)?.to_value();
            let d = parse_duration(&value).map_err(|m| err(node, key, m))?;
            if k == "timeout" {
                limits.timeout = Some(d);
            } else {
                limits.watchdog = d;
            }
            continue;
        }
        let Some(spec) = specs.iter().find(|s| s.name == k) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(err(
                node,
                key,
                format!(
                    "unknown parameter for stage kind `{kind}` (known: {})",
                    list_or(&known, "none")
                ),
            ));
        };
        let value = substitute(node, bindings, key)?.to_value();
        let Some(coerced) = spec.ty.coerce(&value) else {
            return Err(err(
                node,
                key,
                format!(
                    "expected {}, found {} ({value})",
                    spec.ty.describe(),
                    value.type_name()
                ),
            ));
        };
        params.insert(k.clone(), coerced);
    }
    for spec in &specs {
        // A late parameter at its default stays out (of the key too): see `ParamSpec::late`.
        if let (true, Some(d), Some(v)) = (spec.late, &spec.default, params.get(spec.name)) {
            if v.canonical() == d.canonical() {
                params.remove(spec.name);
            }
            continue;
        }
        if !params.contains_key(spec.name) {
            match &spec.default {
                Some(_) if spec.late => {}
                Some(d) => {
                    params.insert(spec.name.to_string(), d.clone());
                }
                None => {
                    return Err(err(
                        node,
                        prefix,
                        format!("missing required parameter `{}` ({})", spec.name, spec.doc),
                    ))
                }
            }
        }
    }
    if let Err(e) = stage.validate(&params) {
        // At the parameter's own key when the stage names one that the manifest sets.
        return Err(match e.key.as_deref().and_then(|k| raw.get(k)) {
            Some((at, key)) => err(at, key, e.message),
            None => {
                let at = t.get("params").unwrap_or(node);
                err(at, &format!("{prefix}.params"), format!("{name}: {e}"))
            }
        });
    }
    Ok((params, limits, threads))
}

/// `shards = N` of a stage: `None` when absent or 1, else the kind's sharding and N.
fn parse_shards(declared: &Declared, registry: &StageRegistry) -> Result<Option<(Sharding, u32)>> {
    let Declared {
        table: t,
        prefix,
        kind,
        stage,
        ..
    } = declared;
    let Some(node) = t.get("shards") else {
        return Ok(None);
    };
    let key = format!("{prefix}.shards");
    let Some(sharding) = stage.sharding() else {
        let can: Vec<&str> = registry
            .iter()
            .filter(|s| s.sharding().is_some())
            .map(|s| s.kind())
            .collect();
        return Err(err(
            node,
            &key,
            format!(
                "stage kind `{kind}` cannot be sharded (kinds that can: {})",
                list_or(&can, "none")
            ),
        ));
    };
    let count = match node.value {
        NodeValue::Int(n) if (1..=MAX_SHARDS).contains(&n) => n as u32,
        _ => {
            return Err(err(
                node,
                &key,
                format!(
                    "expected a number of shards in 1..={MAX_SHARDS}, found {} ({})",
                    node.type_name(),
                    node.to_value()
                ),
            ))
        }
    };
    let declared = stage.params().iter().any(|p| p.name == sharding.param)
        && !stage.inputs().iter().any(|i| i.name == SHARDS_SLOT);
    if !declared {
        return Err(err(
            node,
            &key,
            format!(
                "stage kind `{kind}` declares sharding by parameter `{}` but no such parameter, or \
                 an input named `{SHARDS_SLOT}` (a bug in the stage)",
                sharding.param
            ),
        ));
    }
    Ok((count > 1).then_some((sharding, count)))
}
