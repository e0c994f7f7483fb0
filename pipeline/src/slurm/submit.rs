//! Submitting instances as Slurm jobs: claiming a key's job record, `sbatch` of one job or of
//! one array for the shards of a stage, and reading how a job ended from the store.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::executor::jobs::{is_active, job_path, job_states, slurm_cmd, JobRecord};
use crate::executor::{FailureRecord, Resolved, Run, RunOptions};
use crate::key::StageKey;
use crate::lease::now_unix;
use crate::plan::{Part, Plan};
use crate::stage::Limits;
use crate::stage::Outcome;
use crate::store::{ArtifactManifest, Store};

use super::SlurmOptions;

pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The shell command a job runs: `adaptor exec` on one instance.
pub(super) fn exec_command(slurm: &SlurmOptions, instance: &str, key: &StageKey) -> String {
    exec_members(slurm, &[(instance, key)])
}

/// `adaptor exec` on the members of a job, built one after another in this order.
pub(super) fn exec_members(slurm: &SlurmOptions, members: &[(&str, &StageKey)]) -> String {
    let mut exec: Vec<String> = vec![
        slurm.adaptor_bin.display().to_string(),
        "exec".into(),
        slurm.manifest.display().to_string(),
    ];
    for (instance, key) in members {
        exec.extend([
            "--instance".into(),
            instance.to_string(),
            "--key".into(),
            key.to_string(),
        ]);
    }
    exec.extend([
        "--store".into(),
        slurm.store.clone(),
        "--cache-dir".into(),
        slurm.cache_dir.display().to_string(),
    ]);
    exec.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sbatch arguments every job of the executor has: its name, output file and upstream jobs.
fn job_args(name: &str, log: &std::path::Path, deps: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--parsable".into(),
        format!("--job-name=adaptor:{name}"),
        format!("--output={}", log.display()),
        "--kill-on-invalid-dep=yes".into(),
    ];
    if !deps.is_empty() {
        args.push(format!("--dependency=afterok:{}", deps.join(":")));
    }
    args
}

/// Completes a claimed job record with the submitted job's id and output file.
fn record_job(store: &Store, path: &str, claim: JobRecord, id: &str, log: &str) -> Result<()> {
    let record = JobRecord {
        job_id: id.to_string(),
        log: log.to_string(),
        ..claim
    };
    store.put_json(path, &record, false)?;
    Ok(())
}

pub(super) enum Claim {
    /// This run holds `_jobs/<kind>/<key>.json` (with an empty job id) and must submit.
    Ours(JobRecord),
    /// A live job of another run builds the key.
    Reuse { id: String, log: String },
}

/// Takes the job record of a key (create-if-absent), or finds the live job that holds it; a record
/// of a job that ended, or a claim abandoned for `lease_secs`, is taken over.
pub(super) fn claim(
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
pub(super) struct ArraySubmission {
    pub array_id: Option<String>,
    pub tasks: Vec<(usize, String, String, bool)>,
}

/// Gives back job-record claims that were never submitted.
pub(super) fn release(
    plan: &Plan,
    store: &Store,
    resolved: &Resolved,
    ours: &[(usize, u32, JobRecord)],
) {
    for (s, _, _) in ours {
        let _ = store.delete(&job_path(&plan.instances[*s].kind, &resolved.keys[*s]));
    }
}

/// A job of an instance with a `timeout` and no `time` resource asks Slurm for the timeout plus
/// 5 minutes: `adaptor exec` stops the stage at its timeout and records "timed out after …"
/// itself, and the scheduler can still place the job in a shorter queue.
pub(super) fn time_from_timeout(
    res: &crate::plan::SlurmResources,
    limits: &Limits,
) -> Option<String> {
    if res.time.is_some() {
        return None;
    }
    let secs = limits.timeout?.as_secs_f64() + 300.0;
    Some(format!("--time={}", (secs / 60.0).ceil() as u64))
}

/// One run of the Slurm executor: what submitting and following its jobs needs.
pub(super) struct SlurmRun<'a> {
    pub run: &'a Run<'a>,
    pub slurm: &'a SlurmOptions,
    /// `host:pid` of this runner, recorded in the job records it claims.
    pub owner: String,
}

impl SlurmRun<'_> {
    /// Takes the job record of instance `i` (at `path`) for this run, or finds the live job of
    /// another run that holds it ([`claim`]).
    fn claim(&self, i: usize, path: &str) -> Result<Claim> {
        let name = &self.run.plan.instances[i].name;
        claim(self.run.store, self.run.opts, path, name, &self.owner)
    }

    /// Submits instance `i` as one job depending on `deps`, unless a live job of another run
    /// already builds its key (claimed through its job record at `path`): (job id, output, fresh).
    pub(super) fn claim_or_submit(
        &self,
        i: usize,
        path: &str,
        deps: &[String],
    ) -> Result<(String, String, bool)> {
        let (plan, store, slurm) = (self.run.plan, self.run.store, self.slurm);
        let inst = &plan.instances[i];
        let key = &self.run.resolved.keys[i];
        let claim = match self.claim(i, path)? {
            Claim::Reuse { id, log } => return Ok((id, log, false)),
            Claim::Ours(claim) => claim,
        };
        let log = slurm
            .log_dir
            .join(format!("{}-{}-%j.out", inst.kind, key.short()));
        let res = slurm.resources_for(plan, &inst.kind);
        let mut args = job_args(&inst.name, &log, deps);
        args.extend(res.sbatch_args());
        args.extend(time_from_timeout(&res, &inst.limits));
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
            return Err(Error::NoJobId {
                what: "job",
                output: out,
            });
        }
        let log = log.display().to_string().replace("%j", &id);
        record_job(store, path, claim, &id, &log)?;
        Ok((id, log, true))
    }

    /// Claims the job records of `shards` (stale shards of one stage instance) and submits those
    /// not already being built as one job array: task `i` runs `adaptor exec` on shard `i`.
    pub(super) fn submit_array(
        &self,
        shards: &[usize],
        deps: &[String],
    ) -> Result<ArraySubmission> {
        let (plan, resolved) = (self.run.plan, self.run.resolved);
        let (store, slurm) = (self.run.store, self.slurm);
        let (mut tasks, ours) = self.claim_all(shards, |s| match plan.instances[s].part {
            Part::Shard { index, .. } => Some(index),
            _ => None,
        })?;
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
                matches!(m.part, Part::Merge { .. })
                    && m.stage == first.stage
                    && m.axes == first.axes
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
        let mut args = job_args(&format!("{whole}[shards]"), &log, deps);
        args.push(format!("--array={}", indices.join(",")));
        let res = slurm.resources_for(plan, &first.kind);
        args.extend(res.sbatch_args());
        args.extend(time_from_timeout(&res, &first.limits));
        // Task `i` builds shard `i`; any other task id is a bug and fails loudly.
        let mut script = String::from("case \"$SLURM_ARRAY_TASK_ID\" in");
        for (s, index, _) in &ours {
            script.push_str(&format!(
                " {index}) exec {};;",
                exec_command(slurm, &plan.instances[*s].name, &resolved.keys[*s])
            ));
        }
        script.push_str(
            " *) echo \"no shard for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2;; esac",
        );
        args.push(format!("--wrap={script}"));
        let id = self.sbatch_for(&args, &ours, "array job")?;
        for (s, index, claim) in ours {
            let task = format!("{id}_{index}");
            let log = log
                .display()
                .to_string()
                .replace("%A", &id)
                .replace("%a", &index.to_string());
            let path = job_path(&plan.instances[s].kind, &resolved.keys[s]);
            record_job(store, &path, claim, &task, &log)?;
            tasks.push((s, task, log, true));
        }
        Ok(ArraySubmission {
            array_id: Some(id),
            tasks,
        })
    }

    /// Claims the job records of `members` (stale instances of one kind, in dependency order)
    /// and submits those not already being built as one job that builds them one after another:
    /// (instance, job id, job output, submitted here) for each member.
    pub(super) fn submit_group(
        &self,
        members: &[usize],
        deps: &[String],
    ) -> Result<Vec<(usize, String, String, bool)>> {
        let (plan, resolved) = (self.run.plan, self.run.resolved);
        let (store, slurm) = (self.run.store, self.slurm);
        let (mut tasks, ours) = self.claim_all(members, |_| Some(0))?;
        if ours.is_empty() {
            return Ok(tasks);
        }
        // Members another run builds are waited for like any upstream job.
        let mut deps = deps.to_vec();
        deps.extend(tasks.iter().map(|(_, id, _, _)| id.clone()));
        let first = &plan.instances[ours[0].0];
        let log = slurm.log_dir.join(format!(
            "{}-group-{}-%j.out",
            first.kind,
            resolved.keys[ours[0].0].short()
        ));
        let name = format!("{}[+{} in group]", first.name, ours.len() - 1);
        let mut args = job_args(&name, &log, &deps);
        let res = slurm.resources_for(plan, &first.kind);
        args.extend(res.sbatch_args());
        // the members' timeouts add up
        let limits = Limits {
            timeout: ours
                .iter()
                .map(|(m, _, _)| plan.instances[*m].limits.timeout)
                .sum::<Option<Duration>>(),
            ..Limits::default()
        };
        args.extend(time_from_timeout(&res, &limits));
        let names: Vec<(&str, &StageKey)> = ours
            .iter()
            .map(|(m, _, _)| (plan.instances[*m].name.as_str(), &resolved.keys[*m]))
            .collect();
        args.push(format!("--wrap={}", exec_members(slurm, &names)));
        let id = self.sbatch_for(&args, &ours, "group job")?;
        let log = log.display().to_string().replace("%j", &id);
        for (m, _, claim) in ours {
            let path = job_path(&plan.instances[m].kind, &resolved.keys[m]);
            record_job(store, &path, claim, &id, &log)?;
            tasks.push((m, id.clone(), log.clone(), true));
        }
        Ok(tasks)
    }

    /// Claims the job records of `members` (those `index` gives an array index, 0 outside
    /// arrays): the members a live job of another run builds, as (instance, job id, output,
    /// false), and the claims this run must submit. On an error every claim is given back.
    #[allow(clippy::type_complexity)]
    fn claim_all(
        &self,
        members: &[usize],
        index: impl Fn(usize) -> Option<u32>,
    ) -> Result<(
        Vec<(usize, String, String, bool)>,
        Vec<(usize, u32, JobRecord)>,
    )> {
        let (plan, store, resolved) = (self.run.plan, self.run.store, self.run.resolved);
        let (mut reused, mut ours) = (Vec::new(), Vec::new());
        for &m in members {
            let Some(i) = index(m) else { continue };
            let path = job_path(&plan.instances[m].kind, &resolved.keys[m]);
            match self.claim(m, &path) {
                Ok(Claim::Reuse { id, log }) => reused.push((m, id, log, false)),
                Ok(Claim::Ours(c)) => ours.push((m, i, c)),
                Err(e) => {
                    release(plan, store, resolved, &ours);
                    return Err(e);
                }
            }
        }
        Ok((reused, ours))
    }

    /// `sbatch` for the claims `ours`: the job id, or the claims given back and the error.
    fn sbatch_for(
        &self,
        args: &[String],
        ours: &[(usize, u32, JobRecord)],
        what: &'static str,
    ) -> Result<String> {
        let (plan, store, resolved) = (self.run.plan, self.run.store, self.run.resolved);
        let out = match slurm_cmd("sbatch", args) {
            Ok(o) => o,
            Err(e) => {
                release(plan, store, resolved, ours);
                return Err(e);
            }
        };
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            release(plan, store, resolved, ours);
            return Err(Error::NoJobId { what, output: out });
        }
        Ok(id)
    }

    /// How instance `i` ended once its job `id` (output `log`) left the queue in `state`: read
    /// from the store, never from Slurm.
    pub(super) fn ended(
        &self,
        i: usize,
        (id, log): (&str, &str),
        state: &str,
        outcomes: &BTreeMap<usize, Outcome>,
    ) -> Result<Outcome> {
        let (plan, store, resolved) = (self.run.plan, self.run.store, self.run.resolved);
        let inst = &plan.instances[i];
        let key = &resolved.keys[i];
        if let Some(m) =
            store.get_json::<ArtifactManifest>(&Store::manifest_path(&inst.kind, key))?
        {
            return Ok(Outcome::Ran { seconds: m.seconds });
        }
        let failed = Store::failed_dir(&inst.kind, key);
        if let Some(f) =
            store.get_json_or_stale::<FailureRecord>(&format!("{failed}/_error.json"))?
        {
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
}
