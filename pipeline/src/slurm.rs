//! The Slurm executor: each stale stage instance becomes a batch job that runs `adaptor exec` on
//! that one instance against the shared store; DAG edges become `--dependency=afterok`.
//!
//! The stale shards of one sharded stage instance (`shards = N`) go out as one job array
//! (`--array=i,j,...`), task `i` building shard `i`; the merge instance is an ordinary job that
//! depends `afterok` on the whole array. Each shard's record holds its task id (`<array>_<i>`).
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
use crate::plan::{Part, Plan};
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
fn array_of(id: &str) -> &str {
    id.split_once('_').map_or(id, |(a, _)| a)
}

/// What to name in `--dependency` and `scancel`: the array id for tasks of an array this run
/// submitted (it holds exactly the shards of one merge), else the job or task id; deduplicated.
fn job_targets<'a>(ids: impl Iterator<Item = &'a String>, arrays_here: &[String]) -> Vec<String> {
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
    let mut arrays_here: Vec<String> = Vec::new();
    for &i in &to_run {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        if jobs.contains_key(&i) {
            continue; // a shard submitted with its siblings' array
        }
        let inst = &plan.instances[i];
        let dep_ids: Vec<String> = inst
            .deps()
            .filter_map(|d| jobs.get(&d).map(|(id, _)| id.clone()))
            .collect();
        let deps = job_targets(dep_ids.iter(), &arrays_here);
        if let Part::Shard { .. } = inst.part {
            // The stale shards of this instance's stage and grid point, as one array. They share
            // their inputs, so their dependencies are all submitted by now.
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
            let array = submit_array(plan, store, resolved, opts, slurm, &siblings, &deps, &owner)?;
            if let Some(a) = array.array_id {
                arrays_here.push(a);
            }
            for (s, id, log, fresh) in array.tasks {
                if fresh {
                    submitted_here.push(id.clone());
                }
                sink.event(&RunEvent::Submitted {
                    instance: plan.instances[s].name.clone(),
                    job: id.clone(),
                    reused: !fresh,
                });
                jobs.insert(s, (id, log));
            }
            continue;
        }
        let key = &resolved.keys[i];
        let path = job_path(&inst.kind, key);
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
            let mine: Vec<String> = left
                .iter()
                .filter_map(|i| jobs.get(i).map(|(id, _)| id.clone()))
                .filter(|id| submitted_here.contains(id))
                .collect();
            let ids = job_targets(mine.iter(), &arrays_here);
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
    let claim = match claim(store, opts, path, &inst.name, owner)? {
        Claim::Reuse { id, log } => return Ok((id, log, false)),
        Claim::Ours(claim) => claim,
    };
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
    args.push(format!("--wrap={}", exec_command(slurm, &inst.name, key)));
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
    Ok((id, log, true))
}

/// The shell command a job runs: `adaptor exec` on one instance.
fn exec_command(slurm: &SlurmOptions, instance: &str, key: &StageKey) -> String {
    let exec: Vec<String> = vec![
        slurm.adaptor_bin.display().to_string(),
        "exec".into(),
        slurm.manifest.display().to_string(),
        "--instance".into(),
        instance.to_string(),
        "--key".into(),
        key.to_string(),
        "--store".into(),
        slurm.store.clone(),
        "--cache-dir".into(),
        slurm.cache_dir.display().to_string(),
    ];
    exec.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

enum Claim {
    /// This run holds `_jobs/<kind>/<key>.json` (with an empty job id) and must submit.
    Ours(JobRecord),
    /// A live job of another run builds the key.
    Reuse { id: String, log: String },
}

/// Takes the job record of a key (create-if-absent), or finds the live job that holds it; a record
/// of a job that ended, or a claim abandoned for `lease_secs`, is taken over.
fn claim(
    store: &Store,
    opts: &RunOptions,
    path: &str,
    instance: &str,
    owner: &str,
) -> Result<Claim> {
    loop {
        let claim = JobRecord {
            instance: instance.to_string(),
            job_id: String::new(),
            owner: owner.into(),
            unix: now_unix(),
            log: String::new(),
        };
        if store.put_json(path, &claim, true)? {
            return Ok(Claim::Ours(claim));
        }
        // An empty or truncated record (a writer killed mid-write, a bad disk) is stale: taken
        // over by compare-and-swap, so two runners never both claim it.
        if let crate::store::Record::Corrupt { version, .. } =
            store.get_record::<JobRecord>(path)?
        {
            let bytes = serde_json::to_vec_pretty(&claim).expect("serialisable");
            if store
                .put_if_version(path, bytes.into(), &version)?
                .is_some()
            {
                return Ok(Claim::Ours(claim));
            }
            continue;
        }
        match store.get_json_or_stale::<JobRecord>(path)? {
            Some(r) if !r.job_id.is_empty() => {
                let states = job_states(std::slice::from_ref(&r.job_id))?;
                if states.get(&r.job_id).is_some_and(|s| is_active(s)) {
                    return Ok(Claim::Reuse {
                        id: r.job_id,
                        log: r.log,
                    });
                }
                store.delete(path)?;
            }
            Some(r) if now_unix() - r.unix > opts.lease_secs => store.delete(path)?,
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
            None => {}
        }
    }
}

/// The shards of one array submission: (instance, job id `A_i`, job output file, submitted here).
struct ArraySubmission {
    array_id: Option<String>,
    tasks: Vec<(usize, String, String, bool)>,
}

/// Claims the job records of `shards` (stale shards of one stage instance) and submits those not
/// already being built as one job array: task `i` runs `adaptor exec` on shard `i`.
#[allow(clippy::too_many_arguments)]
fn submit_array(
    plan: &Plan,
    store: &Store,
    resolved: &Resolved,
    opts: &RunOptions,
    slurm: &SlurmOptions,
    shards: &[usize],
    deps: &[String],
    owner: &str,
) -> Result<ArraySubmission> {
    let mut tasks = Vec::new();
    let mut ours: Vec<(usize, u32, JobRecord)> = Vec::new();
    for &s in shards {
        let inst = &plan.instances[s];
        let Part::Shard { index, .. } = inst.part else {
            continue;
        };
        let path = job_path(&inst.kind, &resolved.keys[s]);
        match claim(store, opts, &path, &inst.name, owner) {
            Ok(Claim::Reuse { id, log }) => tasks.push((s, id, log, false)),
            Ok(Claim::Ours(c)) => ours.push((s, index, c)),
            Err(e) => {
                release(plan, store, resolved, &ours);
                return Err(e);
            }
        }
    }
    if ours.is_empty() {
        return Ok(ArraySubmission {
            array_id: None,
            tasks,
        });
    }
    let first = &plan.instances[ours[0].0];
    let whole = plan
        .instances
        .iter()
        .position(|m| {
            matches!(m.part, Part::Merge { .. }) && m.stage == first.stage && m.axes == first.axes
        })
        .map_or_else(|| first.name.clone(), |m| plan.instances[m].name.clone());
    let whole_key = plan.instance(&whole).map_or_else(
        || resolved.keys[ours[0].0].short(),
        |m| resolved.keys[m].short(),
    );
    let log = slurm
        .log_dir
        .join(format!("{}-{whole_key}-%A_%a.out", first.kind));
    let indices: Vec<String> = ours.iter().map(|(_, i, _)| i.to_string()).collect();
    let mut args: Vec<String> = vec![
        "--parsable".into(),
        format!("--array={}", indices.join(",")),
        format!("--job-name=adaptor:{whole}[shards]"),
        format!("--output={}", log.display()),
        "--kill-on-invalid-dep=yes".into(),
    ];
    if !deps.is_empty() {
        args.push(format!("--dependency=afterok:{}", deps.join(":")));
    }
    args.extend(slurm.resources_for(plan, &first.kind).sbatch_args());
    // Task `i` builds shard `i`; any other task id is a bug and fails loudly.
    let mut script = String::from("case \"$SLURM_ARRAY_TASK_ID\" in");
    for (s, index, _) in &ours {
        script.push_str(&format!(
            " {index}) exec {};;",
            exec_command(slurm, &plan.instances[*s].name, &resolved.keys[*s])
        ));
    }
    script.push_str(" *) echo \"no shard for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2;; esac");
    args.push(format!("--wrap={script}"));
    let out = match slurm_cmd("sbatch", &args) {
        Ok(o) => o,
        Err(e) => {
            release(plan, store, resolved, &ours);
            return Err(e);
        }
    };
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        release(plan, store, resolved, &ours);
        return Err(Error::Other(format!(
            "sbatch printed no array job id: {out:?}"
        )));
    }
    for (s, index, claim) in ours {
        let task = format!("{id}_{index}");
        let log = log
            .display()
            .to_string()
            .replace("%A", &id)
            .replace("%a", &index.to_string());
        store.put_json(
            &job_path(&plan.instances[s].kind, &resolved.keys[s]),
            &JobRecord {
                job_id: task.clone(),
                log: log.clone(),
                ..claim
            },
            false,
        )?;
        tasks.push((s, task, log, true));
    }
    Ok(ArraySubmission {
        array_id: Some(id),
        tasks,
    })
}

/// Gives back job-record claims that were never submitted.
fn release(plan: &Plan, store: &Store, resolved: &Resolved, ours: &[(usize, u32, JobRecord)]) {
    for (s, _, _) in ours {
        let _ = store.delete(&job_path(&plan.instances[*s].kind, &resolved.keys[*s]));
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
    if let Some(f) = store.get_json_or_stale::<FailureRecord>(&format!("{failed}/_error.json"))? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_tasks_of_this_run_are_named_by_their_array() {
        let ids: Vec<String> = ["7_0", "7_2", "9", "5_1", "7_1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Array 7 was submitted here: depend on / cancel it whole; 5_1 is another run's task.
        assert_eq!(
            job_targets(ids.iter(), &["7".to_string()]),
            ["7", "9", "5_1"]
        );
        assert_eq!(array_of("12_3"), "12");
        assert_eq!(array_of("12"), "12");
    }
}
