//! Keys, states and the local executor.
//!
//! [`resolve`] fingerprints external inputs and computes every instance's key; [`states`] asks the
//! store what exists; [`run`] builds what is stale on a bounded pool of worker threads, each stage
//! under a per-key lease so two runners never build the same key at once.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fingerprint::{Fingerprint, FingerprintCache};
use crate::key::{KeyRecipe, StageKey};
use crate::plan::{InputRef, Part, Plan};
use crate::stage::{
    format_duration, Activity, InputArtifact, InputOrigin, Limits, ProgressSink, StageContext,
    StageRegistry,
};
use crate::store::{self, ArtifactManifest, IndexEntry, InputRecord, Lease, PublishOutcome, Store};
use crate::value::canonical_params;

/// Keys of every instance of a plan, and the digests of its external inputs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub keys: Vec<StageKey>,
    pub recipes: Vec<KeyRecipe>,
    /// Per external input: its fingerprint.
    pub externals: Vec<Fingerprint>,
}

/// The digest that stands for an external input in keys: its kind, parameters and content.
pub fn external_digest(plan: &Plan, idx: usize, fp: &Fingerprint) -> String {
    let e = &plan.externals[idx];
    let text = format!(
        "adaptor-external-input/1\n{}\n{}\n{}\n{}\n",
        e.reference(),
        e.kind,
        canonical_params(&e.params),
        fp.digest
    );
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// Fingerprints the external inputs (in parallel) and computes every instance's key.
pub fn resolve(
    plan: &Plan,
    registry: &StageRegistry,
    cache: &FingerprintCache,
    verify: bool,
) -> Result<Resolved> {
    let externals: Vec<Fingerprint> = plan
        .externals
        .par_iter()
        .map(|e| {
            cache.fingerprint(&e.path, verify).map_err(|err| {
                Error::Other(format!(
                    "{} ({}): cannot fingerprint {}: {err}",
                    e.reference(),
                    e.kind,
                    e.path.display()
                ))
            })
        })
        .collect::<Result<_>>()?;
    let digests: Vec<String> = externals
        .iter()
        .enumerate()
        .map(|(i, fp)| external_digest(plan, i, fp))
        .collect();
    let mut keys: Vec<StageKey> = Vec::with_capacity(plan.instances.len());
    let mut recipes = Vec::with_capacity(plan.instances.len());
    for inst in &plan.instances {
        let stage = registry
            .get(&inst.kind)
            .expect("plans only hold registered kinds");
        let inputs = inst
            .inputs
            .iter()
            .map(|(slot, refs)| {
                let ks = refs
                    .iter()
                    .map(|r| match r {
                        InputRef::External(e) => digests[*e].clone(),
                        // Dependency order guarantees the upstream key is already computed.
                        InputRef::Stage(s) => keys[*s].to_string(),
                    })
                    .collect();
                (slot.clone(), ks)
            })
            .collect();
        let recipe = KeyRecipe {
            kind: inst.kind.clone(),
            version: stage.version(),
            params: inst.params.clone(),
            inputs,
        };
        keys.push(recipe.key());
        recipes.push(recipe);
    }
    Ok(Resolved {
        keys,
        recipes,
        externals,
    })
}

/// Where an instance stands against the store.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    UpToDate,
    /// Built before under another key (something changed since).
    Stale {
        previous: StageKey,
    },
    /// Never built.
    Missing,
    /// The last attempt at this key failed.
    Failed {
        error: String,
        log: String,
    },
    /// A cluster job for this key is waiting in the queue.
    Queued {
        job: String,
    },
    /// Another runner holds the lease.
    Running {
        owner: String,
        /// Seconds without a progress report or log line, when longer than the instance's
        /// watchdog interval.
        silent: Option<f64>,
    },
    /// Complete, but a file is missing or its size differs from `_manifest.json`: rebuilt by
    /// the next run (after moving the artifact aside).
    Corrupt {
        bad: Vec<store::BadFile>,
    },
}

impl State {
    pub fn label(&self) -> &'static str {
        match self {
            State::UpToDate => "up-to-date",
            State::Stale { .. } => "stale",
            State::Missing => "missing",
            State::Failed { .. } => "failed",
            State::Running { .. } => "running",
            State::Queued { .. } => "queued",
            State::Corrupt { .. } => "corrupt",
        }
    }

    pub fn needs_run(&self) -> bool {
        !matches!(self, State::UpToDate)
    }
}

/// The state of each listed instance (all of the plan when `which` is `None`).
pub fn states(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    lease_secs: f64,
) -> Result<Vec<State>> {
    let items: Vec<(String, StageKey)> = plan
        .instances
        .iter()
        .zip(&resolved.keys)
        .map(|(i, k)| (i.kind.clone(), k.clone()))
        .collect();
    let complete = store.complete_many(&items)?;
    let pending: Vec<usize> = (0..items.len()).filter(|&i| !complete[i]).collect();
    let jobs = crate::slurm::live_jobs(plan, resolved, store, &pending)?;
    // A stat per file of each complete artifact (one listing per artifact on S3).
    let done_items: Vec<(String, StageKey)> = (0..items.len())
        .filter(|&i| complete[i])
        .map(|i| items[i].clone())
        .collect();
    let mut sizes = store.check_sizes(&done_items)?.into_iter();
    let mut out = Vec::with_capacity(items.len());
    for (idx, done) in complete.into_iter().enumerate() {
        if done {
            let bad = sizes.next().expect("one per complete artifact");
            out.push(if bad.is_empty() {
                State::UpToDate
            } else {
                State::Corrupt { bad }
            });
            continue;
        }
        let (kind, key) = &items[idx];
        if let Some((job, state)) = jobs.get(&idx) {
            out.push(if state == "PENDING" {
                State::Queued { job: job.clone() }
            } else {
                let lease = store.get_json_or_stale::<Lease>(&Store::lock_path(kind, key))?;
                State::Running {
                    owner: format!("slurm job {job}"),
                    silent: lease
                        .and_then(|l| silent_for(l.activity_unix, &plan.instances[idx].limits)),
                }
            });
            continue;
        }
        if let crate::lease::LeaseState::Live {
            owner,
            activity_unix,
        } = crate::lease::state(store, kind, key, lease_secs)?
        {
            let silent = silent_for(activity_unix, &plan.instances[idx].limits);
            out.push(State::Running { owner, silent });
            continue;
        }
        let failed_dir = Store::failed_dir(kind, key);
        if let Some(err) =
            store.get_json_or_stale::<FailureRecord>(&format!("{failed_dir}/_error.json"))?
        {
            out.push(State::Failed {
                error: err.error,
                log: format!("{failed_dir}/_log.txt"),
            });
            continue;
        }
        let entry: Option<IndexEntry> = store.get_json_or_stale(&Store::index_path(
            &plan.manifest_id,
            &plan.instances[idx].name,
        ))?;
        out.push(match entry {
            Some(e) if e.key != *key => State::Stale { previous: e.key },
            _ => State::Missing,
        });
    }
    Ok(out)
}

/// How long the stage under `lease` has been silent, when longer than its watchdog interval.
fn silent_for(activity_unix: Option<f64>, limits: &Limits) -> Option<f64> {
    let silent = now_unix() - activity_unix?;
    (silent >= limits.watchdog.as_secs_f64()).then_some(silent)
}

/// `_failed/<kind>/<key>/_error.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FailureRecord {
    pub instance: String,
    pub error: String,
    pub unix: f64,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Scheduling events, for the display.
#[derive(Debug, Clone)]
pub enum RunEvent {
    Planned {
        to_run: usize,
        up_to_date: usize,
    },
    Started {
        instance: String,
        key: StageKey,
    },
    Finished {
        instance: String,
        outcome: Outcome,
    },
    Waiting {
        instance: String,
        owner: String,
    },
    /// A running stage sent no progress report or log line for longer than its watchdog
    /// interval (`watchdog`). Reported once per silence; the stage is not stopped.
    Silent {
        instance: String,
        seconds: f64,
    },
    /// Handed to a cluster scheduler (`reused`: a job another run had already submitted).
    Submitted {
        instance: String,
        job: String,
        reused: bool,
    },
}

/// How one instance ended in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    UpToDate,
    Ran {
        seconds: f64,
    },
    /// Another runner completed it while we waited.
    BuiltElsewhere,
    Failed {
        error: String,
        log: String,
    },
    /// Submitted to a cluster scheduler and not followed (`--detach`).
    Submitted {
        job: String,
    },
    /// An upstream instance failed.
    NotRun {
        because: String,
    },
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stage instances run at once.
    pub jobs: usize,
    /// Threads available to stages in total (shared among the `jobs` running ones).
    pub threads: usize,
    /// Name globs or stage names; empty means everything.
    pub only: Vec<String>,
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
            only: Vec::new(),
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

/// A lease whose heartbeat is older than this belongs to a dead runner (the default of
/// `RunOptions::lease_secs`, and what `status`, `explain` and `gc` judge leases by).
pub const LEASE_SECS: f64 = 60.0;

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn local_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Leases this runner holds, refreshed by a heartbeat thread.
struct Leases {
    held: Mutex<HashMap<String, crate::lease::HeldLease>>,
    lease_secs: f64,
    /// The stages running under them, by lease path: what the watchdog and the leases' activity
    /// times are read from.
    watched: Mutex<HashMap<String, Watched>>,
}

/// A running stage under the watchdog.
struct Watched {
    instance: String,
    activity: Arc<Activity>,
    watchdog: Duration,
    /// A `Silent` event was sent for the current silence.
    reported: bool,
}

impl Leases {
    /// Sends one `Silent` event per silence longer than a stage's watchdog interval.
    fn watch(&self, sink: &dyn ProgressSink) {
        for w in self.watched.lock().expect("watch lock").values_mut() {
            let silent = w.activity.silent_for();
            if silent < w.watchdog {
                w.reported = false;
            } else if !w.reported {
                w.reported = true;
                sink.event(&RunEvent::Silent {
                    instance: w.instance.clone(),
                    seconds: silent.as_secs_f64(),
                });
            }
        }
    }

    fn activity_unix(&self, path: &str) -> Option<f64> {
        let watched = self.watched.lock().expect("watch lock");
        let w = watched.get(path)?;
        Some(now_unix() - w.activity.silent_for().as_secs_f64())
    }
}

impl Leases {
    fn refresh(&self, store: &Store) {
        let paths: Vec<String> = self
            .held
            .lock()
            .expect("lease lock")
            .keys()
            .cloned()
            .collect();
        for path in paths {
            self.confirm(store, &path);
        }
    }

    /// Refreshes one held lease now; `false` if it is lost (or not held).
    fn confirm(&self, store: &Store, path: &str) -> bool {
        let activity = self.activity_unix(path);
        let mut held = self.held.lock().expect("lease lock");
        match held.get_mut(path) {
            Some(h) => {
                h.note_activity(activity);
                crate::lease::refresh(store, h, self.lease_secs)
            }
            None => false,
        }
    }
}

/// The instances a run considers (the `only` selection and what it needs, or everything) and the
/// state of every instance of the plan.
pub fn select(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    opts: &RunOptions,
) -> Result<(Vec<usize>, Vec<State>)> {
    let selected: Vec<usize> = if opts.only.is_empty() {
        (0..plan.instances.len()).collect()
    } else {
        let mut targets = Vec::new();
        for pattern in &opts.only {
            let m = plan.select(pattern);
            if m.is_empty() {
                return Err(Error::NoSuchInstance {
                    pattern: pattern.clone(),
                    hint: hint(plan),
                });
            }
            targets.extend(m);
        }
        plan.closure(&targets)
    };
    let all_states = states(plan, resolved, store, opts.lease_secs)?;
    if opts.no_deps {
        let targets: std::collections::HashSet<usize> =
            opts.only.iter().flat_map(|p| plan.select(p)).collect();
        for &i in &selected {
            if !targets.contains(&i) && all_states[i].needs_run() {
                return Err(Error::Other(format!(
                    "{}: upstream {} is not complete ({}) in the store",
                    targets
                        .iter()
                        .map(|&t| plan.instances[t].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    plan.instances[i].name,
                    all_states[i].label()
                )));
            }
        }
    }
    Ok((selected, all_states))
}

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
    let (to_run, mut outcomes) = match begin(plan, resolved, store, opts, sink.as_ref())? {
        Begin::Build { to_run, outcomes } => (to_run, outcomes),
        Begin::Done(report) => return Ok(report),
    };

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
    let threads_each = (opts.threads / opts.jobs.max(1)).max(1);
    let (stop_heartbeat, heartbeat_stopped) = mpsc::channel::<()>();

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
        let mut left = pending.len();
        while left > 0 {
            while running < opts.jobs.max(1) && !cancel.load(Ordering::Relaxed) {
                let Some(i) = ready.pop() else { break };
                running += 1;
                let tx = tx.clone();
                let sink = sink.clone();
                let cancel = cancel.clone();
                let leases = leases.clone();
                let host = host.clone();
                scope.spawn(move || {
                    let outcome = build_one(
                        plan,
                        registry,
                        store,
                        resolved,
                        i,
                        opts,
                        &host,
                        threads_each,
                        &leases,
                        sink.clone(),
                        cancel,
                    )
                    .unwrap_or_else(|e| Outcome::Failed {
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
    let to_run: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| all_states[i].needs_run())
        .collect();
    sink.event(&RunEvent::Planned {
        to_run: to_run.len(),
        up_to_date: selected.len() - to_run.len(),
    });
    let mut outcomes: BTreeMap<usize, Outcome> = selected
        .iter()
        .filter(|&&i| !all_states[i].needs_run())
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
                    because: format!("dry run ({})", all_states[i].label()),
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

#[allow(clippy::too_many_arguments)]
fn build_one(
    plan: &Plan,
    registry: &StageRegistry,
    store: &Store,
    resolved: &Resolved,
    idx: usize,
    opts: &RunOptions,
    host: &str,
    threads: usize,
    leases: &Leases,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
) -> Result<Outcome> {
    let inst = &plan.instances[idx];
    let key = &resolved.keys[idx];
    let stage = registry.get(&inst.kind).expect("registered");
    let nonce = format!(
        "{}-{}-{}-{:x}",
        inst.kind,
        key.short(),
        std::process::id(),
        blake3::hash(format!("{}{}", now_unix(), idx).as_bytes()).as_bytes()[0]
    );
    let lease = Lease {
        owner: format!("{host}:{}", std::process::id()),
        host: host.to_string(),
        pid: std::process::id(),
        instance: inst.name.clone(),
        heartbeat_unix: now_unix(),
        token: String::new(),
        host_id: String::new(),
        released: false,
        activity_unix: Some(now_unix()),
    };
    let mut on_wait = |owner: &str| {
        sink.event(&RunEvent::Waiting {
            instance: inst.name.clone(),
            owner: owner.to_string(),
        })
    };
    let held = match crate::lease::acquire(
        store,
        &inst.kind,
        key,
        &lease,
        opts.lease_secs,
        &mut on_wait,
        &cancel,
    )? {
        crate::lease::Acquired::Complete => return Ok(Outcome::BuiltElsewhere),
        crate::lease::Acquired::Held { lease, .. } => *lease,
    };
    let lock_path = held.path.clone();
    let lost = held.lost.clone();
    leases
        .held
        .lock()
        .expect("lease lock")
        .insert(lock_path.clone(), held);
    let activity = Arc::new(Activity::new());
    leases.watched.lock().expect("watch lock").insert(
        lock_path.clone(),
        Watched {
            instance: inst.name.clone(),
            activity: activity.clone(),
            watchdog: inst.limits.watchdog,
            reported: false,
        },
    );
    // The stage's cancel flag: the run's, or this lease lost (the stage stops; nothing commits).
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, finished, cancel, lost) =
            (stop.clone(), finished.clone(), cancel.clone(), lost.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) || lost.load(Ordering::SeqCst) {
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let fence = || leases.confirm(store, &lock_path);
    let result = build_locked(
        plan,
        stage.as_ref(),
        store,
        resolved,
        idx,
        opts,
        host,
        threads,
        &nonce,
        sink.clone(),
        stop,
        &fence,
        &lost,
        activity,
    );
    finished.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    leases
        .watched
        .lock()
        .expect("watch lock")
        .remove(&lock_path);
    let mut held = leases
        .held
        .lock()
        .expect("lease lock")
        .remove(&lock_path)
        .expect("held until here");
    let was_lost = held.is_lost();
    if let Err(e) = crate::lease::release(store, &mut held) {
        // Not fatal: the lease goes stale (at once for this host once the process ends).
        store.warn(format!("{}: could not release its lease: {e}", inst.name));
    }
    let outcome = result?;
    if was_lost && !matches!(outcome, Outcome::Ran { .. }) {
        // Another runner took the key over: it commits (or has committed) the artifact.
        return Ok(if store.is_complete(&inst.kind, key)? {
            Outcome::BuiltElsewhere
        } else {
            Outcome::Failed {
                error: format!(
                    "{}: lost its lease on {}/{} to another runner (suspended or cut off for longer than the lease timeout); stopped without publishing",
                    inst.name,
                    inst.kind,
                    key.short()
                ),
                log: String::new(),
            }
        });
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn build_locked(
    plan: &Plan,
    stage: &dyn crate::stage::Stage,
    store: &Store,
    resolved: &Resolved,
    idx: usize,
    opts: &RunOptions,
    host: &str,
    threads: usize,
    nonce: &str,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
    fence: &dyn Fn() -> bool,
    lost: &AtomicBool,
    activity: Arc<Activity>,
) -> Result<Outcome> {
    let inst = &plan.instances[idx];
    let key = &resolved.keys[idx];
    sink.event(&RunEvent::Started {
        instance: inst.name.clone(),
        key: key.clone(),
    });
    let started_unix = now_unix();
    let clock = Instant::now();

    // A finished output of this key whose publish failed earlier: publish it, do not recompute.
    if let Some((kept, manifest)) = store.take_unpublished(&inst.kind, key)? {
        return Ok(
            match store.publish(&kept, &manifest, fence, &|| lost.load(Ordering::SeqCst))? {
                PublishOutcome::Published => {
                    store.delete_prefix(&Store::failed_dir(&inst.kind, key))?;
                    Outcome::Ran {
                        seconds: manifest.seconds,
                    }
                }
                PublishOutcome::AlreadyComplete => Outcome::BuiltElsewhere,
                PublishOutcome::LostLease => Outcome::Cancelled,
            },
        );
    }

    let staging = store.new_staging(nonce)?;
    // Who writes this folder, so gc removes it only once its writer is provably gone.
    let owner = crate::ops::StagingOwner {
        host_id: crate::lease::host_id(),
        pid: std::process::id(),
        kind: inst.kind.clone(),
        key: key.clone(),
    };
    std::fs::write(
        staging.join("owner.json"),
        serde_json::to_vec(&owner).expect("serialisable"),
    )
    .map_err(|e| Error::io(staging.join("owner.json"), e))?;
    let out_dir = staging.join("out");
    let log_path = staging.join("log.txt");
    let log_file = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;

    // Inputs as local folders, and how they are recorded.
    let mut inputs: BTreeMap<String, Vec<InputArtifact>> = BTreeMap::new();
    let mut records: BTreeMap<String, Vec<InputRecord>> = BTreeMap::new();
    for (slot, refs) in &inst.inputs {
        for (r, k) in refs.iter().zip(&resolved.recipes[idx].inputs[slot]) {
            let (artifact, reference) = match r {
                InputRef::External(e) => {
                    let ext = &plan.externals[*e];
                    (
                        InputArtifact {
                            path: ext.path.clone(),
                            origin: InputOrigin::External {
                                group: ext.group.clone(),
                                name: ext.name.clone(),
                                kind: ext.kind.clone(),
                                params: ext.params.clone(),
                            },
                        },
                        ext.reference(),
                    )
                }
                InputRef::Stage(s) => {
                    let up = &plan.instances[*s];
                    let up_key = &resolved.keys[*s];
                    (
                        InputArtifact {
                            path: store.local_artifact(&up.kind, up_key)?,
                            origin: InputOrigin::Stage {
                                kind: up.kind.clone(),
                                instance: up.name.clone(),
                                key: up_key.clone(),
                            },
                        },
                        up.name.clone(),
                    )
                }
            };
            inputs.entry(slot.clone()).or_default().push(artifact);
            let content = match r {
                InputRef::External(e) => Some(resolved.externals[*e].digest.clone()),
                InputRef::Stage(_) => None,
            };
            records.entry(slot.clone()).or_default().push(InputRecord {
                reference,
                key: k.clone(),
                content,
            });
        }
    }

    let ctx = StageContext::new(
        inst.name.clone(),
        key.clone(),
        inst.params.clone(),
        inputs,
        out_dir.clone(),
        threads,
        Some(log_file),
        sink.clone(),
        cancel.clone(),
    )
    .with_resume_dir(store.resume_dir(&inst.kind, key))
    .with_time_limit(inst.limits.timeout)
    .with_activity(activity);
    ctx.log(format!("{} key {key}", inst.name));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| match inst.part {
        Part::Merge { .. } => stage.merge(&ctx),
        Part::Whole | Part::Shard { .. } => stage.run(&ctx),
    }));
    // Judged when the stage returns: describing its output below is the runner's time.
    let late = ctx.timed_out();
    // What the stage wrote, described (and hashed) before anything is committed: a FIFO, socket
    // or device in it fails the instance by name instead of blocking the runner.
    let mut files = Vec::new();
    let error: Option<String> = match result {
        Ok(Ok(())) => match RESERVED.iter().find(|r| out_dir.join(r).exists()) {
            Some(r) => Some(format!("the stage wrote `{r}`, a name the runner reserves")),
            None => match store::describe_outputs(&out_dir) {
                Ok(f) => {
                    files = f;
                    None
                }
                Err(e) => Some(e.to_string()),
            },
        },
        Ok(Err(e)) => Some(e.to_string()),
        Err(panic) => Some(format!(
            "the stage panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    };
    // A limit holds for every kind: a stage that runs inside the runner can only be stopped at
    // its cancellation checks, and one that returns after its limit fails all the same.
    let error = match error {
        None if late => Some("the stage finished after its time limit".to_string()),
        e => e,
    };
    if let Some(error) = error {
        if lost.load(Ordering::SeqCst) || cancel.load(Ordering::Relaxed) {
            // Lease lost: not ours any more, the new owner's records are left alone. Cancelled
            // (Ctrl-C, SIGTERM, SIGHUP, scancel): the stage did not fail, so nothing is recorded;
            // the instance stays as it was before the run (missing or stale), on the local
            // executor as on Slurm.
            drop(ctx);
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(Outcome::Cancelled);
        }
        let error = if let (true, Some(limit)) = (late, ctx.time_limit()) {
            // The stage's own message (often "... timed out after") stays in its log.
            ctx.log(format!("stopped: {error}"));
            format!("timed out after {}", format_duration(limit))
        } else {
            error
        };
        ctx.log(format!("FAILED: {error}"));
        drop(ctx);
        let failed = Store::failed_dir(&inst.kind, key);
        let log_rel = format!("{failed}/_log.txt");
        store.upload_file(&log_path, &log_rel)?;
        store.put_json(
            &format!("{failed}/_error.json"),
            &FailureRecord {
                instance: inst.name.clone(),
                error: error.clone(),
                unix: now_unix(),
                host: host.to_string(),
                job: opts.job.clone(),
            },
            false,
        )?;
        store.put_json(
            &Store::index_path(&plan.manifest_id, &inst.name),
            &IndexEntry {
                instance: inst.name.clone(),
                kind: inst.kind.clone(),
                key: key.clone(),
                status: "failed".into(),
                unix: now_unix(),
                error: Some(error.clone()),
                log: log_rel.clone(),
            },
            false,
        )?;
        let _ = std::fs::remove_dir_all(&staging);
        return Ok(Outcome::Failed {
            error,
            log: log_rel,
        });
    }
    let seconds = clock.elapsed().as_secs_f64();
    ctx.log(format!("finished in {seconds:.2}s"));
    drop(ctx);

    let manifest = ArtifactManifest {
        format: 1,
        key: key.clone(),
        kind: inst.kind.clone(),
        version: stage.version(),
        instance: inst.name.clone(),
        manifest: plan.manifest.display().to_string(),
        params: inst.params.clone(),
        inputs: records,
        files,
        started_unix,
        seconds,
        tool: opts.tool.clone(),
        host: host.to_string(),
        job: opts.job.clone(),
        attempt: store.new_attempt(),
    };
    let published = match store.publish(&staging, &manifest, fence, &|| lost.load(Ordering::SeqCst))
    {
        Ok(p) => p,
        Err(e) => {
            // Keep the finished output for the next run, and say so where `status` looks.
            let error = match store.keep_unpublished(&staging, &manifest) {
                Ok(dir) => format!(
                    "publishing failed: {e}; the finished output is kept in {} and the next run publishes it instead of recomputing",
                    dir.display()
                ),
                Err(_) => format!("publishing failed: {e}"),
            };
            let _ = store.put_json(
                &format!("{}/_error.json", Store::failed_dir(&inst.kind, key)),
                &FailureRecord {
                    instance: inst.name.clone(),
                    error: error.clone(),
                    unix: now_unix(),
                    host: host.to_string(),
                    job: opts.job.clone(),
                },
                false,
            );
            return Ok(Outcome::Failed {
                error,
                log: String::new(),
            });
        }
    };
    let outcome = match published {
        PublishOutcome::Published => Outcome::Ran { seconds },
        PublishOutcome::AlreadyComplete => Outcome::BuiltElsewhere,
        PublishOutcome::LostLease => {
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(Outcome::Cancelled);
        }
    };
    // A success supersedes an earlier failure of the same key, and its resume state.
    store.delete_prefix(&Store::failed_dir(&inst.kind, key))?;
    let resume = store.resume_dir(&inst.kind, key);
    if resume.exists() {
        let _ = std::fs::remove_dir_all(&resume);
    }
    store.put_json(
        &Store::index_path(&plan.manifest_id, &inst.name),
        &IndexEntry {
            instance: inst.name.clone(),
            kind: inst.kind.clone(),
            key: key.clone(),
            status: "ok".into(),
            unix: now_unix(),
            error: None,
            log: manifest.file_rel("_log.txt"),
        },
        false,
    )?;
    Ok(outcome)
}

/// File names in an artifact that belong to the runner.
pub const RESERVED: &[&str] = &["_manifest.json", "_log.txt"];

/// Where the staging folders of dead runners are; used by `gc`.
pub fn staging_root(store: &Store) -> Option<PathBuf> {
    store.local_root().map(|r| r.join("_staging"))
}
