//! Step two of two: a located manifest tree → a validated plan (a DAG of stage instances).
//!
//! Grids expand here (`foreach` over `[matrix]` axes), `${axis}` templates are substituted,
//! references between stages are resolved, and every stage's parameters and inputs are checked
//! against what the stage kind declares. Nothing runs and nothing is hashed yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::manifest::{self, Loc, Node, NodeValue};
use crate::stage::{parse_duration, InputAccepts, Limits, StageRegistry, SHARDS_SLOT};
use crate::value::{Params, Value};

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

/// The store a manifest names, before it is opened.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Memory,
}

impl StoreUrl {
    /// Parses `s3://bucket/prefix`, `memory://`, `file:///path` or a path (relative to `base`).
    pub fn parse(s: &str, base: &Path) -> std::result::Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "`{s}` has no bucket name (expected s3://bucket/prefix)"
                ));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        if s == "memory://" || s == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if scheme != "file" {
                return Err(format!(
                    "unsupported store scheme `{scheme}://` (expected a path, file://, s3:// or memory://)"
                ));
            }
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() {
            return Err("empty store path".into());
        }
        Ok(StoreUrl::Local(base.join(path)))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Local(p) => write!(f, "{}", p.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreUrl::Memory => write!(f, "memory://"),
        }
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

/// Which executor runs the stages, and the Slurm settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutorSpec {
    /// `local` (default) or `slurm`.
    pub kind: String,
    pub slurm: SlurmSpec,
}

/// `[executor.slurm]`: defaults for every job, and per stage kind under `resources.<kind>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmSpec {
    pub defaults: SlurmResources,
    pub resources: BTreeMap<String, SlurmResources>,
    /// Where job output goes (must be visible from the nodes); default: the cache folder.
    pub log_dir: Option<PathBuf>,
}

/// Resources of one Slurm job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmResources {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub gpus: Option<i64>,
    pub cpus: Option<i64>,
    /// As sbatch takes it: `16G`, `4000M`.
    pub mem: Option<String>,
    /// As sbatch takes it: `04:00:00`, `1-00:00:00`.
    pub time: Option<String>,
    /// Extra sbatch arguments, e.g. `["--qos=high"]`.
    pub extra: Vec<String>,
}

impl SlurmResources {
    /// `self` with unset fields taken from `base`; `extra` is concatenated.
    pub fn over(&self, base: &SlurmResources) -> SlurmResources {
        SlurmResources {
            partition: self.partition.clone().or_else(|| base.partition.clone()),
            account: self.account.clone().or_else(|| base.account.clone()),
            gpus: self.gpus.or(base.gpus),
            cpus: self.cpus.or(base.cpus),
            mem: self.mem.clone().or_else(|| base.mem.clone()),
            time: self.time.clone().or_else(|| base.time.clone()),
            extra: base.extra.iter().chain(&self.extra).cloned().collect(),
        }
    }

    /// The sbatch arguments these resources stand for.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = &self.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(x) = &self.account {
            a.push(format!("--account={x}"));
        }
        if let Some(g) = self.gpus {
            a.push(format!("--gpus={g}"));
        }
        if let Some(c) = self.cpus {
            a.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &self.mem {
            a.push(format!("--mem={m}"));
        }
        if let Some(t) = &self.time {
            a.push(format!("--time={t}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
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

fn err(node: &Node, key: &str, message: impl Into<String>) -> crate::error::Error {
    node.loc.error(key, message).into()
}

fn table<'a>(node: &'a Node, key: &str) -> Result<&'a BTreeMap<String, Node>> {
    node.as_table().ok_or_else(|| {
        err(
            node,
            key,
            format!("expected a table, found {}", node.type_name()),
        )
    })
}

fn string<'a>(node: &'a Node, key: &str) -> Result<&'a str> {
    node.as_str().ok_or_else(|| {
        err(
            node,
            key,
            format!("expected a string, found {}", node.type_name()),
        )
    })
}

fn check_keys(t: &BTreeMap<String, Node>, allowed: &[&str], prefix: &str) -> Result<()> {
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

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn manifest_id(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("manifest");
    let h = blake3::hash(canonical.to_string_lossy().as_bytes());
    format!("{stem}-{}", &h.to_hex()[..16])
}

/// Builds the plan from an already loaded tree.
pub fn build(path: &Path, root: &Node, registry: &StageRegistry) -> Result<Plan> {
    let top = table(root, "")?;
    check_keys(top, TOP_KEYS, "")?;

    let store = match top.get("store") {
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
    };

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
            check_keys(t, &["kind", path_key, "params"], &prefix)?;
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
            });
        }
    }

    let mut matrix: BTreeMap<String, (Loc, Vec<Node>)> = BTreeMap::new();
    if let Some(node) = top.get("matrix") {
        for (axis, values) in table(node, "matrix")? {
            let key = format!("matrix.{axis}");
            matrix.insert(
                axis.clone(),
                (values.loc.clone(), axis_values(values, &key)?),
            );
        }
    }

    let mut defaults: BTreeMap<String, &BTreeMap<String, Node>> = BTreeMap::new();
    if let Some(node) = top.get("defaults") {
        for (kind, params) in table(node, "defaults")? {
            let key = format!("defaults.{kind}");
            if registry.get(kind).is_none() {
                return Err(err(params, &key, unknown_kind_message(kind, registry)));
            }
            defaults.insert(kind.clone(), table(params, &key)?);
        }
    }

    // Expand every stage into instances; inputs are resolved once all instances exist.
    struct Pending<'a> {
        node: &'a Node,
        prefix: String,
        bindings: BTreeMap<String, Node>,
        inputs: Option<&'a Node>,
    }
    let mut instances: Vec<Instance> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    // Each merge instance and its shards, in shard order.
    let mut merges: Vec<(usize, Vec<usize>)> = Vec::new();
    let stages_node = top.get("stages");
    let empty = BTreeMap::new();
    let stage_table = match stages_node {
        Some(n) => table(n, "stages")?,
        None => &empty,
    };
    for (stage_name, node) in stage_table {
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

        // The grid: (axis, values) in foreach order.
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
                                    if known.is_empty() {
                                        "nothing".to_string()
                                    } else {
                                        known.join(", ")
                                    }
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

        let specs = stage.params();
        let shards = parse_shards(t, &prefix, &kind, stage.as_ref(), registry)?;
        for combo in cartesian(&axes) {
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
                stage_name.clone()
            } else {
                let parts: Vec<String> = axis_values
                    .iter()
                    .map(|(a, v)| format!("{a}={}", render(v)))
                    .collect();
                format!("{stage_name}[{}]", parts.join(","))
            };

            // Parameters: [defaults.KIND] under [stages.NAME].params, then templates, then types.
            let mut raw: BTreeMap<String, (Node, String)> = BTreeMap::new();
            if let Some(d) = defaults.get(&kind) {
                for (k, v) in d.iter() {
                    raw.insert(k.clone(), (v.clone(), format!("defaults.{kind}.{k}")));
                }
            }
            if let Some(p) = t.get("params") {
                for (k, v) in table(p, &format!("{prefix}.params"))? {
                    raw.insert(k.clone(), (v.clone(), format!("{prefix}.params.{k}")));
                }
            }
            if let Some((sharding, _)) = &shards {
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
            for (k, (node, key)) in &raw {
                // Runner parameters are read here and kept out of `params`, so out of the key.
                if k == "timeout" || k == "watchdog" {
                    let value = substitute(node, &bindings, key)?.to_value();
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
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                };
                let value = substitute(node, &bindings, key)?.to_value();
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
                if !params.contains_key(spec.name) {
                    match &spec.default {
                        Some(d) => {
                            params.insert(spec.name.to_string(), d.clone());
                        }
                        None => {
                            return Err(err(
                                node,
                                &prefix,
                                format!(
                                    "missing required parameter `{}` ({})",
                                    spec.name, spec.doc
                                ),
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

            let mut part = Part::Whole;
            if let Some((sharding, count)) = &shards {
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
                    shard_indices.push(instances.len());
                    instances.push(Instance {
                        name: shard_name,
                        stage: stage_name.clone(),
                        kind: kind.clone(),
                        axes: axis_values.clone(),
                        params: shard_params,
                        inputs: BTreeMap::new(),
                        part: Part::Shard {
                            index,
                            count: *count,
                        },
                        limits,
                    });
                    pending.push(Pending {
                        node,
                        prefix: prefix.clone(),
                        bindings: bindings.clone(),
                        inputs: t.get("inputs"),
                    });
                }
                merges.push((instances.len(), shard_indices));
                part = Part::Merge { count: *count };
            }
            instances.push(Instance {
                name,
                stage: stage_name.clone(),
                kind: kind.clone(),
                axes: axis_values,
                params,
                inputs: BTreeMap::new(),
                part,
                limits,
            });
            pending.push(Pending {
                node,
                prefix: prefix.clone(),
                bindings,
                inputs: t.get("inputs"),
            });
        }
    }

    // Resolve inputs. References never name a shard: `enc`, `enc[a=v]` and `enc[*]` mean the
    // merged artifacts.
    let referable = |inst: &Instance| !matches!(inst.part, Part::Shard { .. });
    let by_stage: HashMap<&str, Vec<usize>> = instances
        .iter()
        .enumerate()
        .filter(|(_, inst)| referable(inst))
        .fold(HashMap::new(), |mut m, (i, inst)| {
            m.entry(inst.stage.as_str()).or_default().push(i);
            m
        });
    // Each instance's axes rendered once, and an index from (stage, sorted `a=v,...`) to the
    // instance, so exact references resolve in O(1) even on grids of thousands of instances.
    let rendered: Vec<Vec<(String, String)>> = instances
        .iter()
        .map(|i| i.axes.iter().map(|(a, v)| (a.clone(), render(v))).collect())
        .collect();
    let exact: HashMap<(&str, String), usize> = instances
        .iter()
        .enumerate()
        .filter(|(_, inst)| referable(inst))
        .map(|(i, inst)| {
            (
                (
                    inst.stage.as_str(),
                    axes_signature(rendered[i].iter().map(|(a, v)| (a.as_str(), v.as_str()))),
                ),
                i,
            )
        })
        .collect();
    let lookup = RefIndex {
        by_stage: &by_stage,
        rendered: &rendered,
        exact: &exact,
    };
    let mut resolved: Vec<BTreeMap<String, Vec<InputRef>>> = Vec::with_capacity(instances.len());
    for (idx, p) in pending.iter().enumerate() {
        let inst = &instances[idx];
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
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                };
                let ref_nodes: Vec<&Node> = match &refs.value {
                    NodeValue::Str(_) => vec![refs],
                    NodeValue::Array(a) => a.iter().collect(),
                    _ => {
                        return Err(err(
                            refs,
                            &slot_key,
                            format!(
                                "expected a reference string or an array of them, found {}",
                                refs.type_name()
                            ),
                        ))
                    }
                };
                let mut targets = Vec::new();
                for r in ref_nodes {
                    let text = substitute(r, &p.bindings, &slot_key)?;
                    let text = string(&text, &slot_key)?.to_string();
                    targets.extend(resolve_ref(
                        &text, r, &slot_key, &externals, &instances, &lookup,
                    )?);
                }
                // Check what the slot accepts.
                for t in &targets {
                    let ok = match (&spec.accepts, t) {
                        (InputAccepts::Dataset, InputRef::External(e)) => {
                            externals[*e].group == "datasets"
                        }
                        (InputAccepts::Backbone, InputRef::External(e)) => {
                            externals[*e].group == "backbones"
                        }
                        (InputAccepts::Stage(kinds), InputRef::Stage(s)) => {
                            kinds.contains(&instances[*s].kind.as_str())
                        }
                        (InputAccepts::DatasetOrStage(kinds), InputRef::Stage(s)) => {
                            kinds.contains(&instances[*s].kind.as_str())
                        }
                        (InputAccepts::DatasetOrStage(_), InputRef::External(e)) => {
                            externals[*e].group == "datasets"
                        }
                        (InputAccepts::Any, _) => true,
                        _ => false,
                    };
                    if !ok {
                        let what = match t {
                            InputRef::External(e) => externals[*e].reference(),
                            InputRef::Stage(s) => {
                                format!("{} (kind `{}`)", instances[*s].name, instances[*s].kind)
                            }
                        };
                        return Err(err(
                            refs,
                            &slot_key,
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
                        &slot_key,
                        format!("{}: input `{slot}` takes exactly one artifact, the reference matched {}", inst.name, targets.len()),
                    ));
                }
                if targets.contains(&InputRef::Stage(idx)) {
                    return Err(err(
                        refs,
                        &slot_key,
                        format!("{} cannot be its own input", inst.name),
                    ));
                }
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
        resolved.push(bound);
    }
    for (inst, inputs) in instances.iter_mut().zip(resolved) {
        inst.inputs = inputs;
    }
    for (merge, shards) in merges {
        instances[merge].inputs.insert(
            SHARDS_SLOT.to_string(),
            shards.into_iter().map(InputRef::Stage).collect(),
        );
    }

    let order = topo_order(&instances).map_err(|cycle| {
        let first = &pending[cycle[0]];
        let names: Vec<&str> = cycle.iter().map(|&i| instances[i].name.as_str()).collect();
        err(
            first.node,
            &first.prefix,
            format!("dependency cycle: {}", names.join(" -> ")),
        )
    })?;
    let instances = reorder(instances, &order);

    let executor = match top.get("executor") {
        None => ExecutorSpec {
            kind: "local".into(),
            ..Default::default()
        },
        Some(node) => parse_executor(node, registry)?,
    };

    Ok(Plan {
        manifest: path.to_path_buf(),
        manifest_id: manifest_id(path),
        store,
        executor,
        externals,
        instances,
    })
}

/// `shards = N` of a stage: `None` when absent or 1, else the kind's sharding and N.
fn parse_shards(
    t: &BTreeMap<String, Node>,
    prefix: &str,
    kind: &str,
    stage: &dyn crate::stage::Stage,
    registry: &StageRegistry,
) -> Result<Option<(crate::stage::Sharding, u32)>> {
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
                if can.is_empty() {
                    "none".to_string()
                } else {
                    can.join(", ")
                }
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

fn parse_executor(node: &Node, registry: &StageRegistry) -> Result<ExecutorSpec> {
    let t = table(node, "executor")?;
    check_keys(t, &["kind", "slurm"], "executor")?;
    let kind = match t.get("kind") {
        None => "local".to_string(),
        Some(k) => {
            let s = string(k, "executor.kind")?;
            if s != "local" && s != "slurm" {
                return Err(err(
                    k,
                    "executor.kind",
                    format!("unknown executor `{s}` (expected local or slurm)"),
                ));
            }
            s.to_string()
        }
    };
    let mut slurm = SlurmSpec::default();
    if let Some(sn) = t.get("slurm") {
        let st = table(sn, "executor.slurm")?;
        let mut keys: Vec<&str> = RESOURCE_KEYS.to_vec();
        keys.extend(["resources", "log_dir"]);
        check_keys(st, &keys, "executor.slurm")?;
        slurm.defaults = parse_resources(st, "executor.slurm")?;
        if let Some(l) = st.get("log_dir") {
            slurm.log_dir = Some(l.loc.file.dir().join(string(l, "executor.slurm.log_dir")?));
        }
        if let Some(r) = st.get("resources") {
            for (kind, rn) in table(r, "executor.slurm.resources")? {
                let key = format!("executor.slurm.resources.{kind}");
                if registry.get(kind).is_none() {
                    return Err(err(rn, &key, unknown_kind_message(kind, registry)));
                }
                let rt = table(rn, &key)?;
                check_keys(rt, RESOURCE_KEYS, &key)?;
                slurm
                    .resources
                    .insert(kind.clone(), parse_resources(rt, &key)?);
            }
        }
    }
    Ok(ExecutorSpec { kind, slurm })
}

const RESOURCE_KEYS: &[&str] = &[
    "partition",
    "account",
    "gpus",
    "cpus",
    "mem",
    "time",
    "extra",
];

fn parse_resources(t: &BTreeMap<String, Node>, prefix: &str) -> Result<SlurmResources> {
    let s = |k: &str| -> Result<Option<String>> {
        t.get(k)
            .map(|n| string(n, &format!("{prefix}.{k}")).map(str::to_string))
            .transpose()
    };
    let i = |k: &str| -> Result<Option<i64>> {
        t.get(k)
            .map(|n| match n.value {
                NodeValue::Int(v) if v >= 0 => Ok(v),
                _ => Err(err(
                    n,
                    &format!("{prefix}.{k}"),
                    format!("expected a non-negative integer, found {}", n.type_name()),
                )),
            })
            .transpose()
    };
    let extra = match t.get("extra") {
        None => Vec::new(),
        Some(n) => match &n.value {
            NodeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(j, it)| string(it, &format!("{prefix}.extra[{j}]")).map(str::to_string))
                .collect::<Result<_>>()?,
            _ => {
                return Err(err(
                    n,
                    &format!("{prefix}.extra"),
                    "expected an array of sbatch arguments",
                ))
            }
        },
    };
    Ok(SlurmResources {
        partition: s("partition")?,
        account: s("account")?,
        gpus: i("gpus")?,
        cpus: i("cpus")?,
        mem: s("mem")?,
        time: s("time")?,
        extra,
    })
}

fn unknown_kind_message(kind: &str, registry: &StageRegistry) -> String {
    let known: Vec<&str> = registry.kinds().collect();
    format!("unknown stage kind `{kind}` (known: {})", known.join(", "))
}

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

fn axis_values(node: &Node, key: &str) -> Result<Vec<Node>> {
    let NodeValue::Array(items) = &node.value else {
        return Err(err(
            node,
            key,
            format!(
                "expected a non-empty array of values, found {}",
                node.type_name()
            ),
        ));
    };
    if items.is_empty() {
        return Err(err(node, key, "expected a non-empty array of values"));
    }
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        match item.value {
            NodeValue::Array(_) | NodeValue::Table(_) => {
                return Err(err(
                    item,
                    &format!("{key}[{i}]"),
                    "axis values must be strings, numbers or booleans",
                ))
            }
            _ => {}
        }
        if !seen.insert(render(&item.to_value())) {
            return Err(err(
                item,
                &format!("{key}[{i}]"),
                format!("duplicate value {}", item.to_value()),
            ));
        }
    }
    Ok(items.clone())
}

/// How an axis value appears in instance names and in `${axis}` inside longer strings.
pub fn render(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        // `{:?}` keeps floats recognisable: `1.0`, `0.01`, `1e-5`.
        Value::Float(f) => format!("{f:?}"),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

fn cartesian(axes: &[(String, Vec<Node>)]) -> Vec<Vec<Node>> {
    let mut out: Vec<Vec<Node>> = vec![Vec::new()];
    for (_, values) in axes {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for prefix in &out {
            for v in values {
                let mut row = prefix.clone();
                row.push(v.clone());
                next.push(row);
            }
        }
        out = next;
    }
    out
}

/// Replaces `${axis}` in strings (recursively). A string that is exactly `${axis}` takes the axis
/// value with its type, so `fraction = "${fraction}"` stays a float.
fn substitute(node: &Node, bindings: &BTreeMap<String, Node>, key: &str) -> Result<Node> {
    match &node.value {
        NodeValue::Str(s) if s.contains("${") => {
            if let Some(axis) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                if !axis.contains('}') && !axis.contains("${") {
                    let v = bindings
                        .get(axis)
                        .ok_or_else(|| unbound(node, key, axis, bindings))?;
                    return Ok(Node {
                        value: v.value.clone(),
                        loc: node.loc.clone(),
                    });
                }
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| err(node, key, format!("unclosed `${{` in {s:?}")))?;
                let axis = &after[..end];
                let v = bindings
                    .get(axis)
                    .ok_or_else(|| unbound(node, key, axis, bindings))?;
                out.push_str(&render(&v.to_value()));
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Ok(Node {
                value: NodeValue::Str(out),
                loc: node.loc.clone(),
            })
        }
        NodeValue::Array(items) => Ok(Node {
            value: NodeValue::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| substitute(n, bindings, &format!("{key}[{i}]")))
                    .collect::<Result<_>>()?,
            ),
            loc: node.loc.clone(),
        }),
        NodeValue::Table(t) => Ok(Node {
            value: NodeValue::Table(
                t.iter()
                    .map(|(k, n)| Ok((k.clone(), substitute(n, bindings, &format!("{key}.{k}"))?)))
                    .collect::<Result<_>>()?,
            ),
            loc: node.loc.clone(),
        }),
        _ => Ok(node.clone()),
    }
}

fn unbound(
    node: &Node,
    key: &str,
    axis: &str,
    bindings: &BTreeMap<String, Node>,
) -> crate::error::Error {
    let known: Vec<&str> = bindings.keys().map(String::as_str).collect();
    err(
        node,
        key,
        format!(
            "`${{{axis}}}` is not an axis of this stage's foreach (axes: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    )
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
    let by_stage = index.by_stage;
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
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
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
    by_stage: &'a HashMap<&'a str, Vec<usize>>,
    rendered: &'a [Vec<(String, String)>],
    exact: &'a HashMap<(&'a str, String), usize>,
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
