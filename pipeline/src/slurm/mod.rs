//! The Slurm executor: each stale stage instance becomes a batch job that runs `adaptor exec` on
//! that one instance against the shared store; DAG edges become `--dependency=afterok`.
//!
//! The stale shards of one sharded stage instance (`shards = N`) go out as one job array
//! (`--array=i,j,...`), task `i` building shard `i`; the merge instance is an ordinary job that
//! depends `afterok` on the whole array. Each shard's record holds its task id (`<array>_<i>`).
//!
//! A kind with `group = N` has up to N of its stale instances in one job (a job group): one
//! `adaptor exec` builds them one after another in dependency order; the job succeeds even when a
//! member fails, so that only that member's dependents are not run (their `adaptor exec` finds the
//! upstream missing), and each member keeps its own job record.
//!
//! Job ids are recorded in the store (`_jobs/<kind>/<key>.json`, created if absent), so a second
//! `adaptor run` reuses a queued or running job instead of submitting the same key twice, and
//! `status` can show queued and running jobs. Whether a job succeeded is read from the store, never
//! from Slurm: a job that dies leaves no `_manifest.json`, and the next run resubmits it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::executor::jobs::{is_active, job_path, job_states, job_targets, slurm_cmd};
use crate::executor::{execute, report, Executor, Resolved, Run, RunOptions, RunReport};
use crate::plan::{Plan, SlurmResources};
use crate::stage::ProgressSink;
use crate::stage::{Outcome, RunEvent};
use crate::store::Store;

mod groups;
mod submit;

use groups::{plan_units, UnitKind};
use submit::SlurmRun;

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
    let run = Run::new(plan, store, resolved, opts, sink, cancel);
    execute(&SlurmExecutor { slurm }, &run)
}

/// The Slurm executor: one batch job per stale instance (one array per sharded stage).
pub struct SlurmExecutor<'a> {
    pub slurm: &'a SlurmOptions,
}

impl Executor for SlurmExecutor<'_> {
    fn build(
        &self,
        run: &Run,
        to_run: Vec<usize>,
        mut outcomes: BTreeMap<usize, Outcome>,
    ) -> Result<RunReport> {
        let (plan, store, resolved, opts) = (run.plan, run.store, run.resolved, run.opts);
        let slurm = self.slurm;
        let (sink, cancel) = (run.sink.clone(), run.cancel.clone());
        std::fs::create_dir_all(&slurm.log_dir).map_err(|e| Error::io(&slurm.log_dir, e))?;
        let slurm_run = SlurmRun {
            run,
            slurm,
            owner: format!("{}:{}", opts.host, std::process::id()),
        };

        // Plan the jobs (arrays for shards, groups of one kind, single instances), then submit
        // them in dependency order; a dependency is the job of an upstream instance being built.
        let units = plan_units(plan, &to_run, |kind| {
            slurm
                .resources_for(plan, kind)
                .group
                .map_or(1, |g| g.max(1) as usize)
        });
        let mut jobs: HashMap<usize, (String, String)> = HashMap::new(); // instance -> (job id, log)
        let mut submitted_here: Vec<String> = Vec::new();
        let mut arrays_here: Vec<String> = Vec::new();
        for unit in &units {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            let dep_ids: Vec<String> = unit
                .members
                .iter()
                .flat_map(|&m| plan.instances[m].deps())
                .filter(|d| !unit.members.contains(d))
                .filter_map(|d| jobs.get(&d).map(|(id, _)| id.clone()))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let deps = job_targets(dep_ids.iter(), &arrays_here);
            let submitted: Vec<(usize, String, String, bool)> = match unit.kind {
                UnitKind::Array => {
                    let array = slurm_run.submit_array(&unit.members, &deps)?;
                    arrays_here.extend(array.array_id);
                    array.tasks
                }
                UnitKind::Group => slurm_run.submit_group(&unit.members, &deps)?,
                UnitKind::Single => {
                    let i = unit.members[0];
                    let path = job_path(&plan.instances[i].kind, &resolved.keys[i]);
                    let (id, log, fresh) = slurm_run.claim_or_submit(i, &path, &deps)?;
                    vec![(i, id, log, fresh)]
                }
            };
            for (s, id, log, fresh) in submitted {
                if fresh && !submitted_here.contains(&id) {
                    submitted_here.push(id.clone());
                }
                sink.event(&RunEvent::Submitted {
                    instance: plan.instances[s].name.clone(),
                    job: id.clone(),
                    reused: !fresh,
                });
                jobs.insert(s, (id, log));
            }
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
                let outcome = slurm_run.ended(i, (id, log), state, &outcomes)?;
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
}

impl SlurmOptions {
    /// The manifest's defaults under the per-kind resources.
    pub fn resources_for(&self, plan: &Plan, kind: &str) -> SlurmResources {
        let spec = &plan.executor.slurm;
        match spec.resources.get(kind) {
            Some(r) => r.over(&spec.defaults),
            None => spec.defaults.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::submit::time_from_timeout;
    use crate::executor::jobs::{array_of, job_targets};
    use crate::plan::SlurmResources;
    use crate::stage::Limits;

    #[test]
    fn a_timeout_sets_the_job_time_unless_the_resources_do() {
        let limits = Limits {
            timeout: Some(std::time::Duration::from_secs(3600)),
            ..Limits::default()
        };
        let none = SlurmResources::default();
        assert_eq!(
            time_from_timeout(&none, &limits).as_deref(),
            Some("--time=65")
        );
        assert_eq!(time_from_timeout(&none, &Limits::default()), None);
        let set = SlurmResources {
            time: Some("08:00:00".into()),
            ..Default::default()
        };
        assert_eq!(time_from_timeout(&set, &limits), None);
    }

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
