//! The Slurm executor: each stale stage instance becomes a batch job that runs `adaptor exec` on
//! that one instance against the shared store; DAG edges become `--dependency=afterok`.
//!
//! Job ids are recorded in the store (`_jobs/<kind>/<key>.json`, created if absent), so a second
//! `adaptor run` reuses a queued or running job instead of submitting the same key twice, and
//! `status` can show queued and running jobs. Whether a job succeeded is read from the store, never
//! from Slurm: a job that dies leaves no `_manifest.json`, and the next run resubmits it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::executor::{
    self, now_unix, report, FailureRecord, Outcome, Resolved, RunEvent, RunOptions, RunReport,
};
use crate::key::StageKey;
use crate::plan::Plan;
use crate::stage::ProgressSink;
use crate::store::{ArtifactManifest, Store};

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

/// How to start `adaptor exec` inside a job.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// The `adaptor` binary, as the nodes see it (a shared filesystem path).
    pub adaptor_bin: PathBuf,
    /// The manifest, as an absolute path the nodes see.
    pub manifest: PathBuf,
    /// The store URL passed to each job (`--store`).
    pub store: String,
    pub cache_dir: PathBuf,
    pub log_dir: PathBuf,
    pub poll: Duration,
    /// Submit and return without waiting.
    pub detach: bool,
}

fn slurm_cmd(program: &str, args: &[String]) -> Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        Error::Other(format!(
            "cannot run `{program}` ({e}): is Slurm installed and on PATH on this node?"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The state (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, ...) of each job Slurm still knows.
pub fn job_states(ids: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    // squeue takes a comma-separated list; keep command lines short.
    for chunk in ids.chunks(200) {
        let args = vec![
            "-h".to_string(),
            "-t".to_string(),
            "all".to_string(),
            "-o".to_string(),
            "%i %T".to_string(),
            "-j".to_string(),
            chunk.join(","),
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

fn is_active(state: &str) -> bool {
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

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
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
        if let Some(r) =
            store.get_json::<JobRecord>(&job_path(&plan.instances[i].kind, &resolved.keys[i]))?
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

/// Submits every stale instance as a job and (unless detached) follows them to the end.
pub fn run(
    plan: &Plan,
    store: &Store,
    resolved: &Resolved,
    opts: &RunOptions,
    slurm: &SlurmOptions,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
) -> Result<RunReport> {
    let (to_run, mut outcomes) = match executor::begin(plan, resolved, store, opts, sink.as_ref())?
    {
        executor::Begin::Build { to_run, outcomes } => (to_run, outcomes),
        executor::Begin::Done(report) => return Ok(report),
    };
    std::fs::create_dir_all(&slurm.log_dir).map_err(|e| Error::io(&slurm.log_dir, e))?;
    let owner = format!("{}:{}", opts.host, std::process::id());

    // Submit in dependency order; a dependency is the job of an upstream instance being built.
    let mut jobs: HashMap<usize, (String, String)> = HashMap::new(); // instance -> (job id, log)
    let mut submitted_here: Vec<String> = Vec::new();
    for &i in &to_run {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let inst = &plan.instances[i];
        let key = &resolved.keys[i];
        let path = job_path(&inst.kind, key);
        let deps: Vec<String> = inst
            .deps()
            .filter_map(|d| jobs.get(&d).map(|(id, _)| id.clone()))
            .collect();
        let (id, log, fresh) =
            claim_or_submit(plan, store, resolved, opts, slurm, i, &path, &deps, &owner)?;
        if fresh {
            submitted_here.push(id.clone());
        }
        sink.event(&RunEvent::Submitted {
            instance: inst.name.clone(),
            job: id.clone(),
            reused: !fresh,
        });
        jobs.insert(i, (id, log));
    }
    if slurm.detach {
        for &i in &to_run {
            let outcome = match jobs.get(&i) {
                Some((id, _)) => Outcome::Submitted { job: id.clone() },
                None => Outcome::Cancelled,
            };
            outcomes.insert(i, outcome);
        }
        return Ok(report(plan, outcomes));
    }

    // Follow the jobs; the store says how each ended.
    let mut started: HashMap<usize, bool> = HashMap::new();
    let mut left: Vec<usize> = to_run
        .iter()
        .copied()
        .filter(|i| jobs.contains_key(i))
        .collect();
    for &i in &to_run {
        if !jobs.contains_key(&i) {
            outcomes.insert(i, Outcome::Cancelled);
        }
    }
    while !left.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            let ids: Vec<String> = left
                .iter()
                .filter_map(|i| jobs.get(i).map(|(id, _)| id.clone()))
                .filter(|id| submitted_here.contains(id))
                .collect();
            if !ids.is_empty() {
                let _ = slurm_cmd("scancel", &ids);
            }
            for &i in &left {
                let _ = store.delete(&job_path(&plan.instances[i].kind, &resolved.keys[i]));
                outcomes.insert(i, Outcome::Cancelled);
                sink.event(&RunEvent::Finished {
                    instance: plan.instances[i].name.clone(),
                    outcome: Outcome::Cancelled,
                });
            }
            break;
        }
        let ids: Vec<String> = left.iter().map(|i| jobs[i].0.clone()).collect();
        let states = job_states(&ids)?;
        let mut still = Vec::new();
        for &i in &left {
            let (id, log) = &jobs[&i];
            let inst = &plan.instances[i];
            let state = states.get(id).map(String::as_str).unwrap_or("GONE");
            if state == "RUNNING" && !started.contains_key(&i) {
                started.insert(i, true);
                sink.event(&RunEvent::Started {
                    instance: inst.name.clone(),
                    key: resolved.keys[i].clone(),
                });
            }
            if is_active(state) {
                still.push(i);
                continue;
            }
            let outcome = ended(plan, store, resolved, i, id, log, state, &outcomes)?;
            let _ = store.delete(&job_path(&inst.kind, &resolved.keys[i]));
            sink.event(&RunEvent::Finished {
                instance: inst.name.clone(),
                outcome: outcome.clone(),
            });
            outcomes.insert(i, outcome);
        }
        left = still;
        if !left.is_empty() {
            std::thread::sleep(slurm.poll);
        }
    }
    Ok(report(plan, outcomes))
}

#[allow(clippy::too_many_arguments)]
fn claim_or_submit(
    plan: &Plan,
    store: &Store,
    resolved: &Resolved,
    opts: &RunOptions,
    slurm: &SlurmOptions,
    i: usize,
    path: &str,
    deps: &[String],
    owner: &str,
) -> Result<(String, String, bool)> {
    let inst = &plan.instances[i];
    let key = &resolved.keys[i];
    loop {
        let claim = JobRecord {
            instance: inst.name.clone(),
            job_id: String::new(),
            owner: owner.into(),
            unix: now_unix(),
            log: String::new(),
        };
        if store.put_json(path, &claim, true)? {
            let log = slurm
                .log_dir
                .join(format!("{}-{}-%j.out", inst.kind, key.short()));
            let res = slurm.resources_for(plan, &inst.kind);
            let mut args: Vec<String> = vec![
                "--parsable".into(),
                format!("--job-name=adaptor:{}", inst.name),
                format!("--output={}", log.display()),
                "--kill-on-invalid-dep=yes".into(),
            ];
            if !deps.is_empty() {
                args.push(format!("--dependency=afterok:{}", deps.join(":")));
            }
            args.extend(res.sbatch_args());
            let exec: Vec<String> = vec![
                slurm.adaptor_bin.display().to_string(),
                "exec".into(),
                slurm.manifest.display().to_string(),
                "--instance".into(),
                inst.name.clone(),
                "--key".into(),
                key.to_string(),
                "--store".into(),
                slurm.store.clone(),
                "--cache-dir".into(),
                slurm.cache_dir.display().to_string(),
            ];
            args.push(format!(
                "--wrap={}",
                exec.iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            let out = match slurm_cmd("sbatch", &args) {
                Ok(o) => o,
                Err(e) => {
                    let _ = store.delete(path);
                    return Err(e);
                }
            };
            let id = out.trim().split(';').next().unwrap_or("").to_string();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
                let _ = store.delete(path);
                return Err(Error::Other(format!("sbatch printed no job id: {out:?}")));
            }
            let log = log.display().to_string().replace("%j", &id);
            store.put_json(
                path,
                &JobRecord {
                    job_id: id.clone(),
                    log: log.clone(),
                    ..claim
                },
                false,
            )?;
            return Ok((id, log, true));
        }
        // Someone holds the claim: reuse their job if it is alive, else take over.
        match store.get_json::<JobRecord>(path)? {
            Some(r) if !r.job_id.is_empty() => {
                let states = job_states(std::slice::from_ref(&r.job_id))?;
                if states.get(&r.job_id).is_some_and(|s| is_active(s)) {
                    return Ok((r.job_id, r.log, false));
                }
                store.delete(path)?;
            }
            Some(r) if now_unix() - r.unix > opts.lease_secs => store.delete(path)?,
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
            None => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn ended(
    plan: &Plan,
    store: &Store,
    resolved: &Resolved,
    i: usize,
    id: &str,
    log: &str,
    state: &str,
    outcomes: &BTreeMap<usize, Outcome>,
) -> Result<Outcome> {
    let inst = &plan.instances[i];
    let key = &resolved.keys[i];
    if let Some(m) = store.get_json::<ArtifactManifest>(&Store::manifest_path(&inst.kind, key))? {
        return Ok(Outcome::Ran { seconds: m.seconds });
    }
    let failed = Store::failed_dir(&inst.kind, key);
    if let Some(f) = store.get_json::<FailureRecord>(&format!("{failed}/_error.json"))? {
        if f.unix > 0.0 {
            return Ok(Outcome::Failed {
                error: format!("{} (slurm job {id}, job output {log})", f.error),
                log: format!("{failed}/_log.txt"),
            });
        }
    }
    // No artifact and no failure record: the job never ran the stage (dependency failed, cancelled,
    // killed, out of memory, out of time).
    if let Some(up) = inst.deps().find(|d| {
        matches!(
            outcomes.get(d),
            Some(Outcome::Failed { .. } | Outcome::NotRun { .. } | Outcome::Cancelled)
        )
    }) {
        return Ok(Outcome::NotRun {
            because: plan.instances[up].name.clone(),
        });
    }
    Ok(Outcome::Failed {
        error: format!(
            "slurm job {id} ended ({state}) without committing an artifact; see its output {log}"
        ),
        log: String::new(),
    })
}

impl SlurmOptions {
    /// The manifest's defaults under the per-kind resources.
    pub fn resources_for(&self, plan: &Plan, kind: &str) -> crate::plan::SlurmResources {
        let spec = &plan.executor.slurm;
        match spec.resources.get(kind) {
            Some(r) => r.over(&spec.defaults),
            None => spec.defaults.clone(),
        }
    }
}
