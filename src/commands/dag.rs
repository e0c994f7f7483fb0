//! `adaptor dag`: the manifest's instance graph (or the `--only` selection and what it needs)
//! with each instance's state in the store, as Graphviz dot or a mermaid block.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use pipeline::plan::InputRef;

use super::path::Standing;
use super::Context;
use crate::cli::{DagFormat, DagSettings};
use crate::render::{self, Dag, DagNode};

pub fn dag(cx: &Context, s: &DagSettings) -> Result<ExitCode> {
    let standing = Standing::of(cx, &s.manifest, &s.store, false)?;
    let plan = &standing.plan;
    let which = match s.only.is_empty() {
        true => (0..plan.instances.len()).collect(),
        false => plan.closure(&standing.matching(&s.only)?),
    };
    // External inputs first (in plan order), then the instances; node numbers as they come.
    let mut externals: BTreeMap<usize, usize> = BTreeMap::new();
    for &i in &which {
        for r in plan.instances[i].inputs.values().flatten() {
            if let InputRef::External(e) = r {
                externals.insert(*e, 0);
            }
        }
    }
    let mut nodes = Vec::new();
    for (e, node) in externals.iter_mut() {
        *node = nodes.len();
        nodes.push(DagNode {
            label: plan.externals[*e].reference(),
            state: None,
        });
    }
    let mut instance_node = BTreeMap::new();
    for &i in &which {
        instance_node.insert(i, nodes.len());
        nodes.push(DagNode {
            label: plan.instances[i].name.clone(),
            state: Some(standing.states[i].label()),
        });
    }
    let mut edges = Vec::new();
    for &i in &which {
        for r in plan.instances[i].inputs.values().flatten() {
            let from = match r {
                InputRef::External(e) => externals[e],
                InputRef::Stage(s) => instance_node[s],
            };
            if !edges.contains(&(from, instance_node[&i])) {
                edges.push((from, instance_node[&i]));
            }
        }
    }
    let dag = Dag { nodes, edges };
    print!(
        "{}",
        match s.format {
            DagFormat::Dot => render::render_dot(&dag),
            DagFormat::Mermaid => render::render_mermaid(&dag),
        }
    );
    Ok(ExitCode::SUCCESS)
}
