//! Dependency order: every instance after its inputs (Kahn's algorithm), or the cycle that
//! prevents it, named by its instances.

use std::collections::BTreeSet;

use crate::error::Result;

use super::tree::*;
use super::*;

use super::expand::Expanded;

/// Kahn's algorithm; on a cycle, returns the instances on it.
fn topo_order(instances: &[Instance]) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let n = instances.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, inst) in instances.iter().enumerate() {
        for d in inst.deps() {
            indegree[i] += 1;
            dependents[d].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk from any node left over until a node repeats: that is a cycle.
    let left: BTreeSet<usize> = (0..n).filter(|i| !order.contains(i)).collect();
    let start = *left.iter().next().expect("a node is left");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = instances[cur]
            .deps()
            .find(|d| left.contains(d))
            .expect("a cycle continues");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(cycle);
        }
        path.push(next);
        cur = next;
    }
}

fn reorder(instances: Vec<Instance>, order: &[usize]) -> Vec<Instance> {
    let mut new_index = vec![0; instances.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let mut slots: Vec<Option<Instance>> = instances.into_iter().map(Some).collect();
    order
        .iter()
        .map(|&old| {
            let mut inst = slots[old].take().expect("each index once");
            for refs in inst.inputs.values_mut() {
                for r in refs.iter_mut() {
                    if let InputRef::Stage(s) = r {
                        *s = new_index[*s];
                    }
                }
            }
            inst
        })
        .collect()
}

/// The instances in dependency order (inputs re-indexed), or an error naming a cycle.
pub(super) fn dependency_order(expanded: Expanded) -> Result<Vec<Instance>> {
    let Expanded {
        instances, pending, ..
    } = expanded;
    let order = topo_order(&instances).map_err(|cycle| {
        let first = &pending[cycle[0]];
        let names: Vec<&str> = cycle.iter().map(|&i| instances[i].name.as_str()).collect();
        err(
            first.node,
            &first.prefix,
            format!("dependency cycle: {}", names.join(" -> ")),
        )
    })?;
    Ok(reorder(instances, &order))
}
