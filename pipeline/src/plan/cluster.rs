//! `[executor]`: which executor runs the stages, and the Slurm resources per stage kind. Never
//! part of a key: where an artifact is built does not change what it is.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::Result;
use crate::manifest::{Node, NodeValue};
use crate::stage::StageRegistry;

use super::sections::unknown_kind_message;
use super::tree::*;

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
    /// Up to this many stale instances of the kind in one job (a job group), built one after
    /// another in dependency order; unset or 1: one job per instance. Not an sbatch argument.
    pub group: Option<i64>,
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
            group: self.group.or(base.group),
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

/// `[executor]`, or the local executor when the section is absent.
pub(super) fn executor(
    top: &BTreeMap<String, Node>,
    registry: &StageRegistry,
) -> Result<ExecutorSpec> {
    Ok(match top.get("executor") {
        None => ExecutorSpec {
            kind: "local".into(),
            ..Default::default()
        },
        Some(node) => parse_executor(node, registry)?,
    })
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
    "group",
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
        group: match t.get("group") {
            Some(n) if !matches!(n.value, NodeValue::Int(v) if v >= 1) => {
                return Err(err(
                    n,
                    &format!("{prefix}.group"),
                    match n.value {
                        NodeValue::Int(v) => {
                            format!("expected a positive integer (instances per job), found {v}")
                        }
                        _ => format!(
                            "expected a positive integer (instances per job), found {}",
                            n.type_name()
                        ),
                    },
                ))
            }
            n => n.and_then(|n| match n.value {
                NodeValue::Int(v) => Some(v),
                _ => None,
            }),
        },
    })
}
