//! Step two of two: a located manifest tree → a validated plan (a DAG of stage instances).
//!
//! Grids expand here (`foreach` over `[matrix]` axes), `${axis}` templates are substituted,
//! references between stages are resolved, and every stage's parameters and inputs are checked
//! against what the stage kind declares. Nothing runs and nothing is hashed yet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::fingerprint::Check;
use crate::manifest::{self, Node};
use crate::stage::{Limits, StageRegistry};
use crate::value::{Params, Value};

mod cluster;
mod expand;
mod matrix;
mod order;
mod references;
mod sections;
mod tree;

use crate::store::StoreUrl;

pub use cluster::{ExecutorSpec, SlurmResources, SlurmSpec};
pub use matrix::render;

use tree::{check_keys, table};

/// An external folder declared in the manifest: a raw dataset or a backbone's weights.
#[derive(Debug, Clone)]
pub struct External {
    /// `datasets` or `backbones`.
    pub group: String,
    pub name: String,
    pub kind: String,
    /// Absolute (or manifest-relative, resolved) path.
    pub path: PathBuf,
    pub params: Params,
    /// How a run decides that the folder is unchanged (`check`, `immutable`); not in any key.
    pub check: Check,
}

impl External {
    /// How manifests refer to it: `datasets.rsna`.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.group, self.name)
    }
}

/// What an input slot is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputRef {
    External(usize),
    Stage(usize),
}

/// Which part of a stage's work an instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// All of it (a stage without `shards`).
    Whole,
    /// Shard `index` of `count` (`shards = count`): the stage's sharding parameter is `index/count`.
    Shard { index: u32, count: u32 },
    /// The merge of `count` shards: the stage's name, parameters and inputs, plus the shards'
    /// artifacts under [`SHARDS_SLOT`]. References to the stage resolve to it.
    Merge { count: u32 },
}

/// One node of the DAG: a stage with its grid values substituted.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Stable name: `stage` or `stage[axis=value,...]` with axes in `foreach` order; a shard
    /// appends `shard=i/n` (`enc[shard=2/4]`, `enc[dataset=rsna,shard=0/4]`).
    pub name: String,
    /// The `[stages.NAME]` it was expanded from.
    pub stage: String,
    pub kind: String,
    pub axes: Vec<(String, Value)>,
    pub params: Params,
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    pub part: Part,
    /// The runner parameters (`timeout`, `watchdog`): how an attempt is supervised. Not in
    /// `params`, hence never part of the key.
    pub limits: Limits,
    /// The runner parameter `threads`, when the manifest sets it (see
    /// [`crate::stage::RUNNER_PARAMS`]): kept apart from `params`, and added to the key by
    /// `resolve` only where the kind's output depends on it and it is not the default.
    pub threads: Option<usize>,
}

impl Instance {
    /// Upstream stage instances, deduplicated.
    pub fn deps(&self) -> impl Iterator<Item = usize> + '_ {
        let set: BTreeSet<usize> = self
            .inputs
            .values()
            .flatten()
            .filter_map(|r| match r {
                InputRef::Stage(i) => Some(*i),
                InputRef::External(_) => None,
            })
            .collect();
        set.into_iter()
    }
}

/// A validated, resolved manifest.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The manifest as given on the command line.
    pub manifest: PathBuf,
    /// `stem-<16 hex>` of the manifest's canonical path: the namespace of its run index.
    pub manifest_id: String,
    pub store: Option<StoreUrl>,
    /// `[executor]`: where stages run. Never part of a key.
    pub executor: ExecutorSpec,
    pub externals: Vec<External>,
    /// In dependency order: every instance comes after its inputs.
    pub instances: Vec<Instance>,
}

impl Plan {
    pub fn instance(&self, name: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.name == name)
    }

    /// Instances whose name matches a glob (`*` and `?`), or whose stage name equals `pattern`.
    /// An exact instance name selects that instance alone (`enc` is the merge of a sharded stage,
    /// not its shards too).
    pub fn select(&self, pattern: &str) -> Vec<usize> {
        if let Some(i) = self.instance(pattern) {
            return vec![i];
        }
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.stage == pattern || glob_match(pattern, &i.name))
            .map(|(n, _)| n)
            .collect()
    }

    /// Every instance `targets` depend on, and the targets, in dependency order.
    pub fn closure(&self, targets: &[usize]) -> Vec<usize> {
        let mut keep = vec![false; self.instances.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(self.instances[i].deps());
            }
        }
        (0..self.instances.len()).filter(|&i| keep[i]).collect()
    }
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

const TOP_KEYS: &[&str] = &[
    "store",
    "datasets",
    "backbones",
    "matrix",
    "defaults",
    "stages",
    "executor",
];
const STAGE_KEYS: &[&str] = &["kind", "foreach", "inputs", "params", "shards"];

/// At most this many shards per stage (Slurm's default MaxArraySize is 1001).
pub const MAX_SHARDS: i64 = 1000;

/// Loads a manifest (with includes) and builds its plan.
pub fn load(path: &Path, registry: &StageRegistry) -> Result<Plan> {
    let root = manifest::load(path)?;
    build(path, &root, registry)
}

/// `stem-<16 hex>` of the manifest's canonical path: the namespace of its run index.
fn manifest_id(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("manifest");
    let h = blake3::hash(canonical.to_string_lossy().as_bytes());
    format!("{stem}-{}", &h.to_hex()[..16])
}

/// Builds the plan from an already loaded tree, in the order a reader checks a manifest: the
/// top-level sections, then the stages expanded over their grids, then the references between
/// them, then the dependency order. Errors carry the file, line and key of what is wrong.
pub fn build(path: &Path, root: &Node, registry: &StageRegistry) -> Result<Plan> {
    let top = table(root, "")?;
    check_keys(top, TOP_KEYS, "")?;
    let store = sections::store(top)?;
    let externals = sections::externals(top)?;
    let matrix = sections::matrix(top)?;
    let defaults = sections::defaults(top, registry)?;
    let mut expanded = expand::stages(top, &matrix, &defaults, registry)?;
    references::bind_inputs(&mut expanded, &externals, registry)?;
    let instances = order::dependency_order(expanded)?;
    let executor = cluster::executor(top, registry)?;
    Ok(Plan {
        manifest: path.to_path_buf(),
        manifest_id: manifest_id(path),
        store,
        executor,
        externals,
        instances,
    })
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("eval[*]", "eval[dataset=rsna]"));
        assert!(glob_match("*rsna*", "eval[dataset=rsna,seed=1]"));
        assert!(!glob_match("ingest*", "eval[dataset=rsna]"));
        assert!(glob_match("a?c", "abc"));
    }
}
