//! Where each instance stands against the store: up to date, stale, missing, failed, queued,
//! running or corrupt. Read by `status`, by `explain` and by every executor before it builds.

use crate::error::Result;
use crate::key::StageKey;
use crate::lease::{now_unix, LeaseState};
use crate::plan::Plan;
use crate::stage::Limits;
use crate::store::{self, ForgetRecord, IndexEntry, Lease, Store};

use super::jobs;
use super::Resolved;

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    UpToDate,
    /// Built before under another key (something changed since).
    Stale {
        previous: StageKey,
        /// The other manifest that build came from, when this manifest never built the
        /// instance (a copied or renamed manifest); `None`: this manifest's own last build.
        from: Option<String>,
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
    let mut complete = store.complete_many(&items)?;
    // Forgotten (`adaptor forget`): complete, but missing for this manifest until rebuilt.
    for i in forgotten(plan, resolved, store)? {
        complete[i] = false;
    }
    let pending: Vec<usize> = (0..items.len()).filter(|&i| !complete[i]).collect();
    let jobs = jobs::live_jobs(plan, resolved, store, &pending)?;
    // A stat per file of each complete artifact (one listing per artifact on S3).
    let done_items: Vec<(String, StageKey)> = (0..items.len())
        .filter(|&i| complete[i])
        .map(|i| items[i].clone())
        .collect();
    let mut sizes = store.check_sizes(&done_items)?.into_iter();
    let mut out = Vec::with_capacity(items.len());
    let mut catalog = None;
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
        if let LeaseState::Live {
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
        let name = &plan.instances[idx].name;
        let entry: Option<IndexEntry> =
            store.get_json_or_stale(&Store::index_path(&plan.manifest_id, name))?;
        let state = match entry {
            Some(e) if e.key != *key => State::Stale {
                previous: e.key,
                from: None,
            },
            Some(_) => State::Missing,
            // Never built from this manifest: the last build from any other (listed once).
            None => {
                if catalog.is_none() {
                    catalog = Some(store.index_catalog()?);
                }
                let catalog = catalog.as_ref().expect("listed above");
                match store.last_build_elsewhere(catalog, name, &plan.manifest_id)? {
                    Some(f) if f.entry.key != *key => State::Stale {
                        previous: f.entry.key,
                        from: Some(f.manifest),
                    },
                    _ => State::Missing,
                }
            }
        };
        out.push(state);
    }
    Ok(out)
}

/// The instances of `plan` that `adaptor forget` dropped at their current key: one listing of
/// `_forgotten/<manifest-id>/` (empty unless something was forgotten), then one read per record.
pub fn forgotten(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
) -> Result<std::collections::BTreeSet<usize>> {
    let mut out = std::collections::BTreeSet::new();
    for (rel, _) in store.list(&format!("_forgotten/{}", plan.manifest_id))? {
        let Some(r) = store.get_json_or_stale::<ForgetRecord>(&rel)? else {
            continue;
        };
        if let Some(i) = plan.instance(&r.instance) {
            if resolved.keys[i] == r.key && plan.instances[i].kind == r.kind {
                out.insert(i);
            }
        }
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
