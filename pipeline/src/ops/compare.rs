//! Two plans side by side (`adaptor diff`, `explain --against`): which instances each has, and for
//! an instance in both whose key differs, what in its key recipe differs: the stage version, each
//! parameter, each input binding. Nothing here reads a store.

use std::collections::BTreeSet;

use crate::executor::Resolved;
use crate::key::{KeyRecipe, StageKey};
use crate::plan::{InputRef, Instance, Plan};

/// One parameter that differs between two recipes (values as the manifest would spell them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamChange {
    pub name: String,
    /// `None`: the parameter is not in the old recipe (added).
    pub from: Option<String>,
    /// `None`: the parameter is not in the new recipe (removed).
    pub to: Option<String>,
}

/// The parameters that differ between `old` and `new`, by name.
pub fn param_changes(old: &KeyRecipe, new: &KeyRecipe) -> Vec<ParamChange> {
    let names: BTreeSet<&String> = old.params.keys().chain(new.params.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (old.params.get(name), new.params.get(name));
            match (a, b) {
                (Some(a), Some(b)) if a.canonical() == b.canonical() => None,
                (None, None) => None,
                _ => Some(ParamChange {
                    name: name.clone(),
                    from: a.map(ToString::to_string),
                    to: b.map(ToString::to_string),
                }),
            }
        })
        .collect()
}

/// One input binding that differs: the upstream instance (or external input) now bound, with
/// the key (or digest) on each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChange {
    pub slot: String,
    /// The instance name or `datasets.X` / `backbones.X` bound in B; for a slot whose number of
    /// bindings changed, `N artifact(s), was M`.
    pub reference: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One input binding that differs between an old and a new recipe of the same instance.
pub(crate) enum Rebinding<'r> {
    /// The slot binds another number of artifacts (or the plan binds another number than the
    /// recipe holds).
    Count {
        slot: &'r str,
        before: usize,
        after: usize,
    },
    /// The `n`-th binding of `slot` (`reference` in the new plan) has another key or digest.
    Key {
        slot: &'r str,
        n: usize,
        reference: InputRef,
        before: &'r str,
        after: &'r str,
    },
}

/// The bindings of `inst` whose keys differ between `old` and `new` (its recipe), slot by slot.
pub(crate) fn rebindings<'r>(
    old: &'r KeyRecipe,
    new: &'r KeyRecipe,
    inst: &Instance,
) -> Vec<Rebinding<'r>> {
    let mut out = Vec::new();
    static EMPTY: Vec<String> = Vec::new();
    let slots: BTreeSet<&String> = old.inputs.keys().chain(new.inputs.keys()).collect();
    for slot in slots {
        let before = old.inputs.get(slot).unwrap_or(&EMPTY);
        let after = new.inputs.get(slot).unwrap_or(&EMPTY);
        if before == after {
            continue;
        }
        let refs = inst.inputs.get(slot).map(Vec::as_slice).unwrap_or_default();
        if before.len() != after.len() || refs.len() != after.len() {
            out.push(Rebinding::Count {
                slot,
                before: before.len(),
                after: after.len(),
            });
            continue;
        }
        for (n, ((x, y), r)) in before.iter().zip(after).zip(refs).enumerate() {
            if x != y {
                out.push(Rebinding::Key {
                    slot,
                    n,
                    reference: *r,
                    before: x,
                    after: y,
                });
            }
        }
    }
    out
}

/// An instance in both plans whose key differs.
#[derive(Debug, Clone)]
pub struct InstanceDiff {
    pub instance: String,
    pub kind: String,
    pub key_a: StageKey,
    pub key_b: StageKey,
    /// The stage version, when it differs.
    pub version: Option<(u32, u32)>,
    pub params: Vec<ParamChange>,
    pub inputs: Vec<InputChange>,
}

/// Two plans compared instance by instance (matched by name).
#[derive(Debug, Clone, Default)]
pub struct PlanDiff {
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    /// Instances in both with the same key.
    pub same: Vec<String>,
    /// Instances in both with different keys, in B's dependency order.
    pub changed: Vec<InstanceDiff>,
}

/// Compares plan A with plan B.
pub fn compare(a: &Plan, ra: &Resolved, b: &Plan, rb: &Resolved) -> PlanDiff {
    let mut d = PlanDiff::default();
    for (i, inst) in b.instances.iter().enumerate() {
        let Some(j) = a.instance(&inst.name) else {
            d.only_b.push(inst.name.clone());
            continue;
        };
        if ra.keys[j] == rb.keys[i] {
            d.same.push(inst.name.clone());
            continue;
        }
        d.changed
            .push(instance_diff(b, rb, i, &ra.recipes[j], &ra.keys[j]));
    }
    d.only_a = a
        .instances
        .iter()
        .filter(|inst| b.instance(&inst.name).is_none())
        .map(|inst| inst.name.clone())
        .collect();
    d
}

/// What differs between instance `i` of plan `b` and the recipe `old` (key `old_key`).
pub fn instance_diff(
    b: &Plan,
    rb: &Resolved,
    i: usize,
    old: &KeyRecipe,
    old_key: &StageKey,
) -> InstanceDiff {
    let inst = &b.instances[i];
    let new = &rb.recipes[i];
    let inputs = rebindings(old, new, inst)
        .into_iter()
        .map(|r| match r {
            Rebinding::Count {
                slot,
                before,
                after,
            } => InputChange {
                slot: slot.to_string(),
                reference: format!("{after} artifact(s), was {before}"),
                from: None,
                to: None,
            },
            Rebinding::Key {
                slot,
                reference,
                before,
                after,
                ..
            } => InputChange {
                slot: slot.to_string(),
                reference: match reference {
                    InputRef::External(e) => b.externals[e].reference(),
                    InputRef::Stage(s) => b.instances[s].name.clone(),
                },
                from: Some(before.to_string()),
                to: Some(after.to_string()),
            },
        })
        .collect();
    InstanceDiff {
        instance: inst.name.clone(),
        kind: inst.kind.clone(),
        key_a: old_key.clone(),
        key_b: rb.keys[i].clone(),
        version: (old.version != new.version).then_some((old.version, new.version)),
        params: param_changes(old, new),
        inputs,
    }
}
