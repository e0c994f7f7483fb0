//! The local executor: a bounded pool of worker threads builds the stale instances in dependency
//! order, each under its lease; a failure marks everything downstream of it not run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::plan::Plan;
use crate::stage::{ProgressSink, StageRegistry};
use crate::store::Store;

use super::build::Builder;
use super::leases::{local_host, Leases};
use super::{execute, report, Executor, Outcome, Resolved, Run, RunEvent, RunOptions, RunReport};

/// Builds every stale instance of the plan (or of the `only` selection and what it depends on).
pub fn run(
    plan: &Plan,
    registry: &StageRegistry,
    store: &Store,
    resolved: &Resolved,
    opts: &RunOptions,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
) -> Result<RunReport> {
    let run = Run::new(plan, store, resolved, opts, sink, cancel);
    execute(&LocalPool { registry }, &run)
}

/// The local executor: a pool of `jobs` worker threads on this machine.
pub struct LocalPool<'a> {
    pub registry: &'a StageRegistry,
}

impl Executor for LocalPool<'_> {
    fn build(
        &self,
        run: &Run,
        to_run: Vec<usize>,
        mut outcomes: BTreeMap<usize, Outcome>,
    ) -> Result<RunReport> {
        let (plan, store, resolved, opts) = (run.plan, run.store, run.resolved, run.opts);
        let registry = self.registry;
        let (sink, cancel) = (run.sink.clone(), run.cancel.clone());

        let host = if opts.host.is_empty() {
            local_host()
        } else {
            opts.host.clone()
        };
        let leases = Arc::new(Leases {
            held: Mutex::new(HashMap::new()),
            lease_secs: opts.lease_secs,
            watched: Mutex::new(HashMap::new()),
        });
        let pending: Vec<usize> = to_run.clone();
        let mut waiting_on: HashMap<usize, usize> = HashMap::new(); // instance -> stale deps left
        let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
        let run_set: std::collections::HashSet<usize> = to_run.iter().copied().collect();
        for &i in &pending {
            let deps: Vec<usize> = plan.instances[i]
                .deps()
                .filter(|d| run_set.contains(d))
                .collect();
            waiting_on.insert(i, deps.len());
            for d in deps {
                dependents.entry(d).or_default().push(i);
            }
        }
        let mut ready: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|i| waiting_on[i] == 0)
            .collect();
        ready.reverse(); // pop() takes them in plan order
        let share = (opts.threads / opts.jobs.max(1)).max(1);
        // Each instance's thread count is its own (a part of what it computes, never adjusted to
        // the load): the pool waits until it fits beside the running ones, or runs it alone.
        let needs: HashMap<usize, usize> = pending
            .iter()
            .map(|&i| {
                let stage = registry.get(&plan.instances[i].kind).expect("registered");
                (
                    i,
                    super::stage_threads(&plan.instances[i], stage.as_ref(), share),
                )
            })
            .collect();
        let cores = opts.threads.max(opts.jobs).max(1);
        let (stop_heartbeat, heartbeat_stopped) = mpsc::channel::<()>();
        let builder = Builder {
            plan,
            registry,
            store,
            resolved,
            opts,
            host: &host,
            share,
            leases: &leases,
            sink: &sink,
            cancel: &cancel,
        };

        std::thread::scope(|scope| -> Result<()> {
            {
                let leases = leases.clone();
                let sink = sink.clone();
                let period = Duration::from_secs_f64((opts.lease_secs / 4.0).clamp(0.2, 15.0));
                // Refreshes held leases every `period` and looks for silent stages every `tick`;
                // wakes at once when the run ends.
                let tick = period.min(Duration::from_millis(500));
                scope.spawn(move || {
                    let mut refreshed = Instant::now();
                    while let Err(mpsc::RecvTimeoutError::Timeout) =
                        heartbeat_stopped.recv_timeout(tick)
                    {
                        leases.watch(sink.as_ref());
                        if refreshed.elapsed() >= period {
                            leases.refresh(store);
                            refreshed = Instant::now();
                        }
                    }
                });
            }
            let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
            let mut running = 0usize;
            let mut busy = 0usize; // threads of the running stages
            let mut left = pending.len();
            while left > 0 {
                while running < opts.jobs.max(1) && !cancel.load(Ordering::Relaxed) {
                    // In order: the next ready instance waits for room rather than being passed.
                    let Some(&i) = ready.last() else { break };
                    if running > 0 && busy + needs[&i] > cores {
                        break;
                    }
                    ready.pop();
                    running += 1;
                    busy += needs[&i];
                    let tx = tx.clone();
                    let sink = sink.clone();
                    let builder = &builder;
                    scope.spawn(move || {
                        let outcome = builder.build(i).unwrap_or_else(|e| Outcome::Failed {
                            error: e.to_string(),
                            log: String::new(),
                        });
                        sink.event(&RunEvent::Finished {
                            instance: plan.instances[i].name.clone(),
                            outcome: outcome.clone(),
                        });
                        let _ = tx.send((i, outcome));
                    });
                }
                if running == 0 {
                    // Cancelled before everything started: the rest never runs.
                    for &i in &pending {
                        outcomes.entry(i).or_insert(Outcome::Cancelled);
                    }
                    break;
                }
                let (i, outcome) = rx.recv().expect("a worker is running");
                running -= 1;
                busy -= needs[&i];
                left -= 1;
                let ok = matches!(
                    outcome,
                    Outcome::Ran { .. } | Outcome::BuiltElsewhere | Outcome::UpToDate
                );
                outcomes.insert(i, outcome);
                if ok {
                    for &d in dependents.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                        let n = waiting_on.get_mut(&d).expect("tracked");
                        *n -= 1;
                        if *n == 0 {
                            ready.insert(0, d);
                        }
                    }
                } else {
                    // Everything downstream of a failure is not run.
                    let mut stack = dependents.get(&i).cloned().unwrap_or_default();
                    while let Some(d) = stack.pop() {
                        if outcomes.contains_key(&d) {
                            continue;
                        }
                        outcomes.insert(
                            d,
                            Outcome::NotRun {
                                because: plan.instances[i].name.clone(),
                            },
                        );
                        left -= 1;
                        sink.event(&RunEvent::Finished {
                            instance: plan.instances[d].name.clone(),
                            outcome: outcomes[&d].clone(),
                        });
                        stack.extend(dependents.get(&d).cloned().unwrap_or_default());
                    }
                }
            }
            let _ = stop_heartbeat.send(());
            Ok(())
        })?;
        Ok(report(plan, outcomes))
    }
}
