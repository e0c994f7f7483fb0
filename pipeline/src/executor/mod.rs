//! Keys, states and the executors.
//!
//! [`resolve`] fingerprints external inputs and computes every instance's key; [`states`] asks the
//! store what exists; [`run`] builds what is stale on a bounded pool of worker threads, each stage
//! under a per-key lease so two runners never build the same key at once. The Slurm executor
//! (`crate::slurm`) shares [`select`], [`begin`] and [`report`] and the job records in [`jobs`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::stage::ProgressSink;
use crate::store::Store;

mod build;
pub mod jobs;
mod leases;
mod local;
mod resolve;
mod state;

use crate::stage::{Outcome, RunEvent};

pub use leases::LEASE_SECS;
pub use local::run;
pub use local::LocalPool;
pub use resolve::{external_digest, resolve, stage_memory, stage_threads, Resolved};
pub use state::{forgotten, states, FailureRecord, State};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stage instances run at once.
    pub jobs: usize,
    /// The cores the running stages share: the pool starts a stage only while the threads of
    /// those running fit in `max(threads, jobs)` (a stage that needs more runs alone). A kind whose
    /// output does not depend on its thread count and has no `threads` set gets `threads / jobs`.
    pub threads: usize,
    /// The memory the running stages share, in bytes: a stage without a `memory` parameter gets
    /// `memory / jobs` as its budget (see [`stage_memory`]).
    pub memory: u64,
    /// Name globs or stage names; empty means everything.
    pub only: Vec<String>,
    /// Name globs or stage names rebuilt even when up to date (`run --force`); their complete
    /// artifacts are replaced in one step. Each must match an instance.
    pub force: Vec<String>,
    pub dry_run: bool,
    /// A lease not refreshed for this long belongs to a dead runner.
    pub lease_secs: f64,
    /// The host name recorded in leases and manifests.
    pub host: String,
    pub tool: String,
    /// Build only the selected instances: an upstream that is not complete is an error instead of
    /// being built (`adaptor exec`, inside a cluster job whose dependencies did that).
    pub no_deps: bool,
    /// A label for where this runs (e.g. `slurm job 1234`), recorded in manifests and failures.
    pub job: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            threads: 1,
            memory: crate::stage::DEFAULT_MEMORY,
            only: Vec::new(),
            force: Vec::new(),
            dry_run: false,
            lease_secs: LEASE_SECS,
            host: "localhost".into(),
            tool: concat!("adaptor ", env!("CARGO_PKG_VERSION")).into(),
            no_deps: false,
            job: None,
        }
    }
}

/// The result of a run: one outcome per instance considered, in plan order.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcomes: Vec<(String, Outcome)>,
}

impl RunReport {
    pub fn failed(&self) -> impl Iterator<Item = (&str, &Outcome)> {
        self.outcomes
            .iter()
            .filter(|(_, o)| {
                matches!(
                    o,
                    Outcome::Failed { .. } | Outcome::NotRun { .. } | Outcome::Cancelled
                )
            })
            .map(|(n, o)| (n.as_str(), o))
    }

    pub fn ran(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Ran { .. }))
            .count()
    }
}

/// The instances a run considers (the `only` selection and what it needs, or everything; the
/// `force` patterns select too) and the state of every instance of the plan.
pub fn select(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    opts: &RunOptions,
) -> Result<(Vec<usize>, Vec<State>)> {
    let forced = forced(plan, opts)?;
    let selected: Vec<usize> = if opts.only.is_empty() {
        (0..plan.instances.len()).collect()
    } else {
        let mut targets = Vec::new();
        for pattern in &opts.only {
            targets.extend(matching(plan, pattern)?);
        }
        targets.extend(forced);
        plan.closure(&targets)
    };
    let all_states = states(plan, resolved, store, opts.lease_secs)?;
    if opts.no_deps {
        let targets: std::collections::HashSet<usize> =
            opts.only.iter().flat_map(|p| plan.select(p)).collect();
        for &i in &selected {
            if !targets.contains(&i) && all_states[i].needs_run() {
                return Err(Error::UpstreamIncomplete {
                    targets: targets
                        .iter()
                        .map(|&t| plan.instances[t].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    upstream: plan.instances[i].name.clone(),
                    state: all_states[i].label(),
                });
            }
        }
    }
    Ok((selected, all_states))
}

/// The instances `pattern` matches; none is an error that names a few instances.
fn matching(plan: &Plan, pattern: &str) -> Result<Vec<usize>> {
    let m = plan.select(pattern);
    if m.is_empty() {
        return Err(Error::NoSuchInstance {
            pattern: pattern.to_string(),
            hint: hint(plan),
        });
    }
    Ok(m)
}

/// The instances `--force` names, in plan order.
pub fn forced(plan: &Plan, opts: &RunOptions) -> Result<std::collections::BTreeSet<usize>> {
    let mut out = std::collections::BTreeSet::new();
    for pattern in &opts.force {
        out.extend(matching(plan, pattern)?);
    }
    Ok(out)
}

fn hint(plan: &Plan) -> String {
    let names: Vec<&str> = plan
        .instances
        .iter()
        .map(|i| i.name.as_str())
        .take(6)
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (instances include: {})", names.join(", "))
    }
}

/// How every executor starts a run: what to build, and the outcomes of what is up to date.
pub(crate) enum Begin {
    Build {
        to_run: Vec<usize>,
        outcomes: BTreeMap<usize, Outcome>,
    },
    /// A dry run, or nothing to do.
    Done(RunReport),
}

pub(crate) fn begin(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    opts: &RunOptions,
    sink: &dyn ProgressSink,
) -> Result<Begin> {
    let (selected, all_states) = select(plan, resolved, store, opts)?;
    let forced = forced(plan, opts)?;
    let to_run: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| all_states[i].needs_run() || forced.contains(&i))
        .collect();
    sink.event(&RunEvent::Planned {
        to_run: to_run.len(),
        up_to_date: selected.len() - to_run.len(),
    });
    let mut outcomes: BTreeMap<usize, Outcome> = selected
        .iter()
        .filter(|&&i| !all_states[i].needs_run() && !forced.contains(&i))
        .map(|&i| (i, Outcome::UpToDate))
        .collect();
    if !opts.dry_run && !to_run.is_empty() {
        return Ok(Begin::Build { to_run, outcomes });
    }
    if opts.dry_run {
        for &i in &to_run {
            outcomes.insert(
                i,
                Outcome::NotRun {
                    because: if forced.contains(&i) {
                        format!("dry run ({}, forced)", all_states[i].label())
                    } else {
                        format!("dry run ({})", all_states[i].label())
                    },
                },
            );
        }
    }
    Ok(Begin::Done(report(plan, outcomes)))
}

pub(crate) fn report(plan: &Plan, outcomes: BTreeMap<usize, Outcome>) -> RunReport {
    RunReport {
        outcomes: outcomes
            .into_iter()
            .map(|(i, o)| (plan.instances[i].name.clone(), o))
            .collect(),
    }
}

/// Where the staging folders of dead runners are; used by `gc`.
pub fn staging_root(store: &Store) -> Option<PathBuf> {
    store.local_root().map(|r| r.join("_staging"))
}

/// One run as every executor sees it.
pub struct Run<'a> {
    pub plan: &'a Plan,
    pub store: &'a Store,
    pub resolved: &'a Resolved,
    pub opts: &'a RunOptions,
    pub sink: Arc<dyn ProgressSink>,
    /// Set on Ctrl-C, SIGTERM or SIGHUP: nothing new starts.
    pub cancel: Arc<AtomicBool>,
}

impl<'a> Run<'a> {
    pub fn new(
        plan: &'a Plan,
        store: &'a Store,
        resolved: &'a Resolved,
        opts: &'a RunOptions,
        sink: Arc<dyn ProgressSink>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        Run {
            plan,
            store,
            resolved,
            opts,
            sink,
            cancel,
        }
    }
}

/// What builds the stale instances of a run: the local pool ([`LocalPool`]) or a cluster
/// scheduler (`crate::slurm::SlurmExecutor`). Every executor starts the same way ([`execute`]).
pub trait Executor {
    /// Builds `to_run` (in dependency order); `outcomes` holds the selected instances that are
    /// up to date already. Returns one outcome per instance considered.
    fn build(
        &self,
        run: &Run,
        to_run: Vec<usize>,
        outcomes: BTreeMap<usize, Outcome>,
    ) -> Result<RunReport>;
}

/// Runs `executor` on what is stale: selects, reports the plan, and hands it what to build
/// (nothing on a dry run or when everything is up to date).
pub fn execute(executor: &dyn Executor, run: &Run) -> Result<RunReport> {
    match begin(
        run.plan,
        run.resolved,
        run.store,
        run.opts,
        run.sink.as_ref(),
    )? {
        Begin::Build { to_run, outcomes } => executor.build(run, to_run, outcomes),
        Begin::Done(report) => Ok(report),
    }
}
