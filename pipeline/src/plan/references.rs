//! References between stages: `datasets.X`, `backbones.X`, `stage`, `stage[a=v,...]` and
//! `stage[*]` resolved to instances, and each input slot checked against what its kind accepts.

use std::collections::{BTreeMap, HashMap};

use crate::error::Result;
use crate::manifest::{Node, NodeValue};
use crate::stage::{BoundInput, InputAccepts, InputSpec, Stage, StageRegistry, SHARDS_SLOT};

use super::tree::*;
use super::*;

use super::expand::{Expanded, Pending};
use super::matrix::{render, substitute};

fn describe_accepts(a: &InputAccepts) -> String {
    match a {
        InputAccepts::Dataset => "a dataset (`datasets.NAME`)".into(),
        InputAccepts::Backbone => "a backbone (`backbones.NAME`)".into(),
        InputAccepts::Stage(k) => format!("the output of a stage of kind {}", k.join(" or ")),
        InputAccepts::DatasetOrStage(k) => {
            format!(
                "a dataset (`datasets.NAME`) or the output of a stage of kind {}",
                k.join(" or ")
            )
        }
        InputAccepts::Any => "any dataset, backbone or stage output".into(),
    }
}

/// Resolves `datasets.X`, `backbones.X`, `stage`, `stage[a=v,...]`, `stage[a=v,*]` or `stage[*]`.
fn resolve_ref(
    text: &str,
    node: &Node,
    key: &str,
    externals: &[External],
    instances: &[Instance],
    index: &RefIndex,
) -> Result<Vec<InputRef>> {
    let by_stage = &index.by_stage;
    for group in ["datasets", "backbones"] {
        if let Some(name) = text.strip_prefix(group).and_then(|r| r.strip_prefix('.')) {
            return match externals
                .iter()
                .position(|e| e.group == group && e.name == name)
            {
                Some(i) => Ok(vec![InputRef::External(i)]),
                None => {
                    let known: Vec<String> = externals
                        .iter()
                        .filter(|e| e.group == group)
                        .map(|e| e.name.clone())
                        .collect();
                    Err(err(
                        node,
                        key,
                        format!(
                            "`{text}` is not declared (declared {group}: {})",
                            list_or(&known, "none")
                        ),
                    ))
                }
            };
        }
    }
    let (stage, selector) = match text.split_once('[') {
        Some((s, rest)) => {
            let sel = rest
                .strip_suffix(']')
                .ok_or_else(|| err(node, key, format!("`{text}`: missing closing `]`")))?;
            (s, Some(sel))
        }
        None => (text, None),
    };
    let Some(candidates) = by_stage.get(stage) else {
        let mut known: Vec<&str> = by_stage.keys().copied().collect();
        known.sort();
        return Err(err(
            node,
            key,
            format!(
                "`{text}` names no stage (expected datasets.NAME, backbones.NAME or a stage: {})",
                known.join(", ")
            ),
        ));
    };
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    let mut wildcard = false;
    if let Some(sel) = selector {
        for part in sel.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "*" {
                wildcard = true;
            } else if let Some((a, v)) = part.split_once('=') {
                wanted.insert(a.trim(), v.trim());
            } else {
                return Err(err(
                    node,
                    key,
                    format!("`{text}`: expected `axis=value` or `*`, found `{part}`"),
                ));
            }
        }
    }
    let matches: Vec<InputRef> = if wildcard {
        candidates
            .iter()
            .filter(|&&i| {
                let axes = &index.rendered[i];
                wanted
                    .iter()
                    .all(|(a, v)| axes.iter().any(|(ax, val)| ax == a && val == v))
            })
            .map(|&i| InputRef::Stage(i))
            .collect()
    } else {
        let sig = axes_signature(wanted.iter().map(|(a, v)| (*a, *v)));
        index
            .exact
            .get(&(stage, sig))
            .map(|&i| vec![InputRef::Stage(i)])
            .unwrap_or_default()
    };
    if matches.is_empty() {
        let names: Vec<&str> = candidates
            .iter()
            .map(|&i| instances[i].name.as_str())
            .take(8)
            .collect();
        return Err(err(
            node,
            key,
            format!(
                "`{text}` matches no instance (stage `{stage}` has: {})",
                names.join(", ")
            ),
        ));
    }
    Ok(matches)
}

/// Lookup tables for resolving references between instances.
struct RefIndex<'a> {
    /// Stage name → its referable instances.
    by_stage: HashMap<&'a str, Vec<usize>>,
    /// Each instance's axes, rendered once.
    rendered: Vec<Vec<(String, String)>>,
    /// (stage, sorted `a=v,...`) → instance, so exact references resolve in O(1) even on grids
    /// of thousands of instances.
    exact: HashMap<(&'a str, String), usize>,
}

impl<'a> RefIndex<'a> {
    /// References never name a shard: `enc`, `enc[a=v]` and `enc[*]` mean the merged artifacts.
    fn new(instances: &'a [Instance]) -> Self {
        let referable = |inst: &Instance| !matches!(inst.part, Part::Shard { .. });
        let by_stage = instances
            .iter()
            .enumerate()
            .filter(|(_, inst)| referable(inst))
            .fold(
                HashMap::new(),
                |mut m: HashMap<&str, Vec<usize>>, (i, inst)| {
                    m.entry(inst.stage.as_str()).or_default().push(i);
                    m
                },
            );
        let rendered: Vec<Vec<(String, String)>> = instances
            .iter()
            .map(|i| i.axes.iter().map(|(a, v)| (a.clone(), render(v))).collect())
            .collect();
        let exact = instances
            .iter()
            .enumerate()
            .filter(|(_, inst)| referable(inst))
            .map(|(i, inst)| {
                let sig = axes_signature(rendered[i].iter().map(|(a, v)| (a.as_str(), v.as_str())));
                ((inst.stage.as_str(), sig), i)
            })
            .collect();
        RefIndex {
            by_stage,
            rendered,
            exact,
        }
    }
}

/// What binding an instance's inputs looks at: every instance and external, and the index.
struct Binding<'a> {
    instances: &'a [Instance],
    externals: &'a [External],
    index: RefIndex<'a>,
}

/// `a=v,b=w` with axes sorted: the same set of axis values in any order gives the same string.
fn axes_signature<'s>(axes: impl Iterator<Item = (&'s str, &'s str)>) -> String {
    let mut v: Vec<(&str, &str)> = axes.collect();
    v.sort();
    v.iter()
        .map(|(a, x)| format!("{a}={x}"))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// Binds every instance's input slots to the instances and externals its references name, then
/// gives each merge its shards under [`SHARDS_SLOT`].
pub(super) fn bind_inputs(
    expanded: &mut Expanded,
    externals: &[External],
    registry: &StageRegistry,
) -> Result<()> {
    let binding = Binding {
        instances: &expanded.instances,
        externals,
        index: RefIndex::new(&expanded.instances),
    };
    let resolved = expanded
        .pending
        .iter()
        .enumerate()
        .map(|(idx, p)| bind_instance(&binding, idx, p, registry))
        .collect::<Result<Vec<_>>>()?;
    for (inst, inputs) in expanded.instances.iter_mut().zip(resolved) {
        inst.inputs = inputs;
    }
    for (merge, shards) in std::mem::take(&mut expanded.merges) {
        expanded.instances[merge].inputs.insert(
            SHARDS_SLOT.to_string(),
            shards.into_iter().map(InputRef::Stage).collect(),
        );
    }
    Ok(())
}

/// The inputs of instance `idx`: each slot its manifest binds, checked, and no required slot
/// left unbound.
fn bind_instance(
    binding: &Binding,
    idx: usize,
    p: &Pending,
    registry: &StageRegistry,
) -> Result<BTreeMap<String, Vec<InputRef>>> {
    let inst = &binding.instances[idx];
    let stage = registry.get(&inst.kind).expect("checked above");
    let specs = stage.inputs();
    let mut bound: BTreeMap<String, Vec<InputRef>> = BTreeMap::new();
    if let Some(inputs) = p.inputs {
        let key = format!("{}.inputs", p.prefix);
        for (slot, refs) in table(inputs, &key)? {
            let slot_key = format!("{key}.{slot}");
            let Some(spec) = specs.iter().find(|s| s.name == slot) else {
                let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                return Err(err(
                    refs,
                    &slot_key,
                    format!(
                        "unknown input for stage kind `{}` (known: {})",
                        inst.kind,
                        list_or(&known, "none")
                    ),
                ));
            };
            let targets = bind_slot(binding, idx, p, spec, refs, &slot_key)?;
            bound.insert(slot.clone(), targets);
        }
    }
    for spec in &specs {
        if spec.required && !bound.contains_key(spec.name) {
            return Err(err(
                p.node,
                &p.prefix,
                format!(
                    "missing required input `{}` ({}; takes {})",
                    spec.name,
                    spec.doc,
                    describe_accepts(&spec.accepts)
                ),
            ));
        }
    }
    check_bound(binding, inst, p, stage.as_ref(), &bound)?;
    Ok(bound)
}

/// The kind's own checks of the instance against what its slots are bound to
/// ([`crate::Stage::check_inputs`]), reported at the slot at fault.
fn check_bound(
    binding: &Binding,
    inst: &Instance,
    p: &Pending,
    stage: &dyn Stage,
    bound: &BTreeMap<String, Vec<InputRef>>,
) -> Result<()> {
    let references = bound
        .iter()
        .map(|(slot, refs)| {
            let seen = refs.iter().map(|r| match *r {
                InputRef::External(e) => {
                    let e = &binding.externals[e];
                    (e.kind.as_str(), e.reference(), &e.params)
                }
                InputRef::Stage(s) => {
                    let up = &binding.instances[s];
                    (up.kind.as_str(), up.name.clone(), &up.params)
                }
            });
            (slot.as_str(), seen.collect::<Vec<_>>())
        })
        .collect::<BTreeMap<&str, Vec<_>>>();
    let inputs = references
        .iter()
        .map(|(slot, refs)| {
            let seen = refs
                .iter()
                .map(|(kind, name, params)| BoundInput { kind, name, params });
            (*slot, seen.collect())
        })
        .collect();
    let Err(e) = stage.check_inputs(&inst.params, &inputs) else {
        return Ok(());
    };
    let inputs_key = format!("{}.inputs", p.prefix);
    let slot = e.key.as_deref().and_then(|slot| {
        let node = p.inputs?.as_table()?.get(slot)?;
        Some((node, format!("{inputs_key}.{slot}")))
    });
    Err(match slot {
        Some((node, key)) => err(node, &key, format!("{}: {}", inst.name, e.message)),
        None => err(
            p.inputs.unwrap_or(p.node),
            &inputs_key,
            format!("{}: {e}", inst.name),
        ),
    })
}

/// One slot of instance `idx`: its references (`${axis}` substituted) resolved, each of a kind
/// the slot accepts, one artifact unless the slot takes many, and never the instance itself.
fn bind_slot(
    binding: &Binding,
    idx: usize,
    p: &Pending,
    spec: &InputSpec,
    refs: &Node,
    slot_key: &str,
) -> Result<Vec<InputRef>> {
    let Binding {
        instances,
        externals,
        index,
    } = binding;
    let inst = &instances[idx];
    let slot = spec.name;
    let ref_nodes: Vec<&Node> = match &refs.value {
        NodeValue::Str(_) => vec![refs],
        NodeValue::Array(a) => a.iter().collect(),
        _ => {
            return Err(err(
                refs,
                slot_key,
                format!(
                    "expected a reference string or an array of them, found {}",
                    refs.type_name()
                ),
            ))
        }
    };
    let mut targets = Vec::new();
    for r in ref_nodes {
        let text = substitute(r, &p.bindings, slot_key)?;
        let text = string(&text, slot_key)?.to_string();
        targets.extend(resolve_ref(
            &text, r, slot_key, externals, instances, index,
        )?);
    }
    for t in &targets {
        if !accepts(&spec.accepts, *t, externals, instances) {
            let what = match t {
                InputRef::External(e) => externals[*e].reference(),
                InputRef::Stage(s) => {
                    format!("{} (kind `{}`)", instances[*s].name, instances[*s].kind)
                }
            };
            return Err(err(
                refs,
                slot_key,
                format!(
                    "{}: input `{slot}` takes {}, not {what}",
                    inst.name,
                    describe_accepts(&spec.accepts)
                ),
            ));
        }
    }
    if !spec.many && targets.len() != 1 {
        return Err(err(
            refs,
            slot_key,
            format!(
                "{}: input `{slot}` takes exactly one artifact, the reference matched {}",
                inst.name,
                targets.len()
            ),
        ));
    }
    if targets.contains(&InputRef::Stage(idx)) {
        return Err(err(
            refs,
            slot_key,
            format!("{} cannot be its own input", inst.name),
        ));
    }
    Ok(targets)
}

/// Whether a slot declared as `accepts` takes `target`.
fn accepts(
    accepts: &InputAccepts,
    target: InputRef,
    externals: &[External],
    instances: &[Instance],
) -> bool {
    match (accepts, target) {
        (InputAccepts::Dataset, InputRef::External(e)) => externals[e].group == "datasets",
        (InputAccepts::Backbone, InputRef::External(e)) => externals[e].group == "backbones",
        (InputAccepts::Stage(kinds), InputRef::Stage(s))
        | (InputAccepts::DatasetOrStage(kinds), InputRef::Stage(s)) => {
            kinds.contains(&instances[s].kind.as_str())
        }
        (InputAccepts::DatasetOrStage(_), InputRef::External(e)) => {
            externals[e].group == "datasets"
        }
        (InputAccepts::Any, _) => true,
        _ => false,
    }
}
