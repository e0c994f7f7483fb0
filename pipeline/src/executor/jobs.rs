//! Cluster jobs as the runner records them (`_jobs/<kind>/<key>.json`) and as Slurm reports them
//! (`squeue`). Shared by every executor: `status` shows queued and running jobs whichever
//! executor runs it; the Slurm executor (`crate::slurm`) writes the records.

use std::collections::HashMap;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::StageKey;
use crate::plan::Plan;
use crate::store::Store;

use super::Resolved;

/// `_jobs/<kind>/<key>.json`: the job building that key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub instance: String,
    /// Empty while the submitting runner is between claiming the key and `sbatch` returning.
    pub job_id: String,
    pub owner: String,
    pub unix: f64,
    /// The job's output file.
    pub log: String,
}

pub fn job_path(kind: &str, key: &StageKey) -> String {
    format!("_jobs/{kind}/{key}.json")
}

pub(crate) fn slurm_cmd(program: &str, args: &[String]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::SlurmUnavailable {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::SlurmFailed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether Slurm answers on this node (`squeue` runs and reaches its controller). `job_states`
/// reads an error as "every job ended", which only holds when Slurm itself is reachable.
pub fn reachable() -> bool {
    slurm_cmd(
        "squeue",
        &["-h".to_string(), "-o".to_string(), "%i".to_string()],
    )
    .is_ok()
}

/// The state (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, ...) of each job Slurm still knows.
pub fn job_states(ids: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    // squeue takes a comma-separated list; keep command lines short.
    for chunk in ids.chunks(200) {
        // An array task `A_i` is looked up through its array `A`; `-r` prints one line per task
        // (`A_i STATE`), pending ones included.
        let mut wanted: Vec<&str> = chunk.iter().map(|id| array_of(id)).collect();
        wanted.sort();
        wanted.dedup();
        let args = vec![
            "-h".to_string(),
            "-r".to_string(),
            "-t".to_string(),
            "all".to_string(),
            "-o".to_string(),
            "%i %T".to_string(),
            "-j".to_string(),
            wanted.join(","),
        ];
        let text = match slurm_cmd("squeue", &args) {
            Ok(t) => t,
            // squeue errors when none of the ids is known any more: they all ended long ago.
            Err(_) => continue,
        };
        for line in text.lines() {
            if let Some((id, state)) = line.trim().split_once(' ') {
                out.insert(id.to_string(), state.trim().to_string());
            }
        }
    }
    Ok(out)
}

/// `1234` for an array task `1234_5`, else the id itself.
pub(crate) fn array_of(id: &str) -> &str {
    id.split_once('_').map_or(id, |(a, _)| a)
}

/// What to name in `--dependency` and `scancel`: the array id for tasks of an array this run
/// submitted (it holds exactly the shards of one merge), else the job or task id; deduplicated.
pub(crate) fn job_targets<'a>(
    ids: impl Iterator<Item = &'a String>,
    arrays_here: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        let a = array_of(id);
        let t = if a != id && arrays_here.iter().any(|x| x == a) {
            a.to_string()
        } else {
            id.clone()
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

pub fn is_active(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
    )
}

/// Looks up live jobs for keys that are not complete: (instance index → (job id, Slurm state)).
pub fn live_jobs(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    which: &[usize],
) -> Result<HashMap<usize, (String, String)>> {
    let mut records = Vec::new();
    for &i in which {
        if let Some(r) = store
            .get_json_or_stale::<JobRecord>(&job_path(&plan.instances[i].kind, &resolved.keys[i]))?
        {
            if !r.job_id.is_empty() {
                records.push((i, r.job_id));
            }
        }
    }
    if records.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = records.iter().map(|(_, id)| id.clone()).collect();
    let states = job_states(&ids)?;
    Ok(records
        .into_iter()
        .filter_map(|(i, id)| {
            states
                .get(&id)
                .filter(|s| is_active(s))
                .map(|s| (i, (id.clone(), s.clone())))
        })
        .collect())
}
