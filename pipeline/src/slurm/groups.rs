//! Which stale instances share a Slurm job: the shards of one merge (a job array), the members of
//! a job group (up to `group` instances of one kind, built one after another in one job), or one
//! instance alone. Planned before anything is submitted, so that the jobs' dependencies form no
//! cycle: an instance joins a kind's open group only if none of its upstream jobs depends on it.

use std::collections::{BTreeSet, HashMap};

use crate::plan::{Part, Plan};

/// How the instances of one job are submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UnitKind {
    /// One instance, one job.
    Single,
    /// The stale shards of one merge: one job array.
    Array,
    /// Instances of one kind run one after another by one `adaptor exec`.
    Group,
}

/// One job to submit: its instances in dependency order and the units it waits for.
#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub kind: UnitKind,
    pub members: Vec<usize>,
    pub deps: BTreeSet<usize>,
}

/// Splits `to_run` (in dependency order) into jobs; `group_size(kind)` is the kind's `group`
/// setting (1: no grouping). Returns the units in an order where every unit comes after those
/// it depends on.
pub(super) fn plan_units(
    plan: &Plan,
    to_run: &[usize],
    group_size: impl Fn(&str) -> usize,
) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut unit_of: HashMap<usize, usize> = HashMap::new();
    let mut open: HashMap<&str, usize> = HashMap::new(); // kind -> its group still taking members
    for &i in to_run {
        if unit_of.contains_key(&i) {
            continue; // a shard placed with its siblings' array
        }
        let inst = &plan.instances[i];
        let deps: BTreeSet<usize> = inst
            .deps()
            .filter_map(|d| unit_of.get(&d).copied())
            .collect();
        if let Part::Shard { .. } = inst.part {
            let siblings: Vec<usize> = to_run
                .iter()
                .copied()
                .filter(|&s| {
                    let o = &plan.instances[s];
                    matches!(o.part, Part::Shard { .. })
                        && o.stage == inst.stage
                        && o.axes == inst.axes
                })
                .collect();
            let u = units.len();
            for &s in &siblings {
                unit_of.insert(s, u);
            }
            units.push(Unit {
                kind: UnitKind::Array,
                members: siblings,
                deps,
            });
            continue;
        }
        let size = group_size(&inst.kind).max(1);
        let joinable = open.get(inst.kind.as_str()).copied().filter(|&g| {
            units[g].members.len() < size && deps.iter().all(|&d| d == g || !reaches(&units, d, g))
        });
        let u = match joinable {
            Some(g) => {
                units[g].members.push(i);
                units[g].deps.extend(deps.into_iter().filter(|&d| d != g));
                g
            }
            None => {
                let u = units.len();
                units.push(Unit {
                    kind: if size > 1 {
                        UnitKind::Group
                    } else {
                        UnitKind::Single
                    },
                    members: vec![i],
                    deps,
                });
                if size > 1 {
                    open.insert(inst.kind.as_str(), u);
                }
                u
            }
        };
        unit_of.insert(i, u);
    }
    for u in &mut units {
        if u.kind == UnitKind::Group && u.members.len() == 1 {
            u.kind = UnitKind::Single;
        }
    }
    topological(units)
}

/// Whether unit `from` waits, directly or not, for unit `to`.
fn reaches(units: &[Unit], from: usize, to: usize) -> bool {
    let mut seen = vec![false; units.len()];
    let mut stack = vec![from];
    while let Some(u) = stack.pop() {
        if u == to {
            return true;
        }
        if !std::mem::replace(&mut seen[u], true) {
            stack.extend(units[u].deps.iter().copied());
        }
    }
    false
}

/// The units reordered so that each comes after the units it depends on (a group that took a
/// member late may depend on a unit made after it); `deps` renumbered.
fn topological(units: Vec<Unit>) -> Vec<Unit> {
    let mut order: Vec<usize> = Vec::with_capacity(units.len());
    let mut placed = vec![false; units.len()];
    fn visit(u: usize, units: &[Unit], placed: &mut [bool], order: &mut Vec<usize>) {
        if placed[u] {
            return;
        }
        placed[u] = true;
        for &d in &units[u].deps {
            visit(d, units, placed, order);
        }
        order.push(u);
    }
    for u in 0..units.len() {
        visit(u, &units, &mut placed, &mut order);
    }
    let mut new_index = vec![0; units.len()];
    for (n, &u) in order.iter().enumerate() {
        new_index[u] = n;
    }
    order
        .iter()
        .map(|&u| Unit {
            kind: units[u].kind,
            members: units[u].members.clone(),
            deps: units[u].deps.iter().map(|&d| new_index[d]).collect(),
        })
        .collect()
}
