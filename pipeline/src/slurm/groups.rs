//! Which stale instances share a Slurm job: the shards of one merge (a job array), the members of
//! a job group (up to `group` instances of one kind, built one after another in one job), or one
//! instance alone. An instance joins a group of its kind that waits for exactly the jobs it waits
//! for (or that group itself, when it depends on a member): grouping never delays an instance
//! behind upstream jobs it does not need, and jobs never wait on each other in a cycle.

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
/// setting (1: no grouping). Every unit comes after the units it depends on (a member's
/// upstream jobs are those of earlier instances, and joining a group adds no dependency to it).
pub(super) fn plan_units(
    plan: &Plan,
    to_run: &[usize],
    group_size: impl Fn(&str) -> usize,
) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut unit_of: HashMap<usize, usize> = HashMap::new();
    let mut open: HashMap<&str, Vec<usize>> = HashMap::new(); // kind -> its groups
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
        let joinable = open
            .get(inst.kind.as_str())
            .into_iter()
            .flatten()
            .copied()
            .find(|&g| {
                let mut outside = deps.clone();
                let on_member = outside.remove(&g);
                units[g].members.len() < size
                    && if on_member {
                        outside.is_subset(&units[g].deps)
                    } else {
                        outside == units[g].deps
                    }
            });
        let u = match joinable {
            Some(g) => {
                units[g].members.push(i);
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
                    open.entry(inst.kind.as_str()).or_default().push(u);
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
    units
}
