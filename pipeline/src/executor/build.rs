//! The build of one instance: take its lease, stage its inputs as local folders, run the stage
//! under its limits, and publish the artifact (or record the failure) while the lease still holds.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lease::now_unix;
use crate::plan::{InputRef, Part, Plan};
use crate::stage::{
    format_duration, Activity, InputArtifact, InputOrigin, ProgressSink, Stage, StageContext,
    StageRegistry,
};
use crate::store::{
    self, ArtifactManifest, IndexEntry, InputRecord, Lease, PublishOutcome, StagingOwner, Store,
    RESERVED,
};

use super::leases::{Leases, Watched};
use super::state::FailureRecord;
use super::{Outcome, Resolved, RunEvent, RunOptions};

/// What building an instance needs from its run, shared by the pool's workers.
pub(super) struct Builder<'a> {
    pub plan: &'a Plan,
    pub registry: &'a StageRegistry,
    pub store: &'a Store,
    pub resolved: &'a Resolved,
    pub opts: &'a RunOptions,
    /// Recorded in leases, manifests and failures.
    pub host: &'a str,
    /// The threads of a stage whose kind takes a share of the cores (see
    /// [`super::stage_threads`]); the others run at their own `threads`.
    pub share: usize,
    pub leases: &'a Leases,
    pub sink: &'a Arc<dyn ProgressSink>,
    /// The run's cancellation (Ctrl-C, SIGTERM).
    pub cancel: &'a Arc<AtomicBool>,
}

/// One attempt at an instance, under its lease.
struct Attempt<'a> {
    /// Publish over a complete artifact of the key (`--force`, or forgotten).
    replace: bool,
    stage: &'a dyn Stage,
    /// Names the staging folder.
    nonce: &'a str,
    /// The stage's cancel flag: the run's, or the lease lost.
    stop: Arc<AtomicBool>,
    /// Refreshes the lease now; `false` when it is lost (checked before committing).
    fence: &'a dyn Fn() -> bool,
    lost: &'a AtomicBool,
    activity: Arc<Activity>,
}

impl Builder<'_> {
    /// Builds instance `idx`: takes its lease (or finds it built elsewhere), runs the attempt, and
    /// releases the lease.
    pub(super) fn build(&self, idx: usize) -> Result<Outcome> {
        let Builder {
            plan,
            registry,
            store,
            opts,
            resolved,
            host,
            leases,
            ..
        } = *self;
        let sink = self.sink.clone();
        let cancel = self.cancel.clone();
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
        let replace = self.replaces(idx)?;
        let held = match crate::lease::acquire_for(
            store,
            &inst.kind,
            key,
            &lease,
            opts.lease_secs,
            &mut on_wait,
            &cancel,
            replace,
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
        let result = self.attempt(
            idx,
            &Attempt {
                replace,
                stage: stage.as_ref(),
                nonce: &nonce,
                stop,
                fence: &fence,
                lost: &lost,
                activity,
            },
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
                        "{}: lost its lease on {}/{} to another runner (suspended or cut off for \
                         longer than the lease timeout); stopped without publishing",
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

    /// One attempt under the lease: publishes a finished output kept from an earlier attempt, or
    /// stages the inputs, runs the stage and publishes (or records the failure).
    fn attempt(&self, idx: usize, attempt: &Attempt) -> Result<Outcome> {
        let Builder {
            plan,
            store,
            resolved,
            opts,
            host,
            share,
            ..
        } = *self;
        let Attempt {
            stage,
            nonce,
            fence,
            lost,
            ..
        } = *attempt;
        let sink = self.sink.clone();
        let cancel = attempt.stop.clone();
        let activity = attempt.activity.clone();
        let inst = &plan.instances[idx];
        let threads = super::stage_threads(inst, stage, share);
        let key = &resolved.keys[idx];
        sink.event(&RunEvent::Started {
            instance: inst.name.clone(),
            key: key.clone(),
        });
        let started_unix = now_unix();
        let clock = Instant::now();

        // A finished output of this key whose publish failed earlier: publish it, do not recompute
        // (unless this is a forced rebuild).
        let kept = match attempt.replace {
            true => None,
            false => store.take_unpublished(&inst.kind, key)?,
        };
        if let Some((kept, manifest)) = kept {
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
        let owner = StagingOwner {
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
        // Scratch beside the output, never part of it: removed as soon as the stage returns.
        let temp_dir = staging.join("tmp");
        std::fs::create_dir_all(&temp_dir).map_err(|e| Error::io(&temp_dir, e))?;
        let log_path = staging.join("log.txt");
        let log_file = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;

        // Inputs as local folders (or, for slots the stage streams, remote locations), and how
        // they are recorded.
        let streamed: Vec<&'static str> = stage
            .inputs()
            .iter()
            .filter(|s| s.streamed)
            .map(|s| s.name)
            .collect();
        let mut remote = Vec::new();
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
                        let from_store = match streamed.contains(&slot.as_str()) {
                            true => store.remote_input(&up.kind, up_key)?,
                            false => None,
                        };
                        let path = match from_store {
                            Some((path, r)) => {
                                remote.push((path.clone(), r));
                                path
                            }
                            None => store.local_artifact(&up.kind, up_key)?,
                        };
                        (
                            InputArtifact {
                                path,
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
        .with_activity(activity)
        .with_memory(super::stage_memory(inst, opts))
        .with_temp_dir(temp_dir.clone());
        let ctx = remote
            .into_iter()
            .fold(ctx, |ctx, (path, r)| ctx.with_remote(path, r));
        ctx.log(format!("{} key {key}", inst.name));
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| match inst.part {
            Part::Merge { .. } => stage.merge(&ctx),
            Part::Whole | Part::Shard { .. } => stage.run(&ctx),
        }));
        let _ = std::fs::remove_dir_all(&temp_dir);
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
            self.record_failure(idx, &error)?;
            self.record_in_index(idx, Some(error.clone()), log_rel.clone())?;
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(Outcome::Failed {
                error,
                log: log_rel,
            });
        }
        let seconds = clock.elapsed().as_secs_f64();
        ctx.log(format!("finished in {seconds:.2}s"));
        let peak_rss_mib = ctx.peak_rss_kib().map(|kib| kib.div_ceil(1024));
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
            peak_rss_mib,
        };
        let is_lost = || lost.load(Ordering::SeqCst);
        let published = match attempt.replace {
            true => store.publish_replacing(&staging, &manifest, fence, &is_lost),
            false => store.publish(&staging, &manifest, fence, &is_lost),
        };
        let published = match published {
            Ok(p) => p,
            Err(e) => {
                // Keep the finished output for the next run, and say so where `status` looks.
                let error = match store.keep_unpublished(&staging, &manifest) {
                    Ok(dir) => format!(
                        "publishing failed: {e}; the finished output is kept in {} and the next \
                         run publishes it instead of recomputing",
                        dir.display()
                    ),
                    Err(_) => format!("publishing failed: {e}"),
                };
                let _ = self.record_failure(idx, &error);
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
        self.record_in_index(idx, None, manifest.file_rel("_log.txt"))?;
        if attempt.replace {
            store.delete(&Store::forgotten_path(&plan.manifest_id, &inst.name))?;
        }
        Ok(outcome)
    }

    /// Whether instance `idx` is rebuilt over its complete artifact: `--force` names it, or
    /// `adaptor forget` dropped it at this key.
    fn replaces(&self, idx: usize) -> Result<bool> {
        let (plan, inst) = (self.plan, &self.plan.instances[idx]);
        if super::forced(plan, self.opts)?.contains(&idx) {
            return Ok(true);
        }
        let marker = Store::forgotten_path(&plan.manifest_id, &inst.name);
        Ok(self
            .store
            .get_json_or_stale::<store::ForgetRecord>(&marker)?
            .is_some_and(|r| r.key == self.resolved.keys[idx]))
    }

    /// Records a failed attempt at instance `idx` (`_failed/<kind>/<key>/_error.json`), where
    /// `status` and the next run look.
    fn record_failure(&self, idx: usize, error: &str) -> Result<()> {
        let inst = &self.plan.instances[idx];
        let failed = Store::failed_dir(&inst.kind, &self.resolved.keys[idx]);
        self.store.put_json(
            &format!("{failed}/_error.json"),
            &FailureRecord {
                instance: inst.name.clone(),
                error: error.to_string(),
                unix: now_unix(),
                host: self.host.to_string(),
                job: self.opts.job.clone(),
            },
            false,
        )?;
        Ok(())
    }

    /// Points the manifest's run index at this attempt of instance `idx`: `ok`, or `failed` with
    /// its error. `log` is store-relative.
    fn record_in_index(&self, idx: usize, error: Option<String>, log: String) -> Result<()> {
        let inst = &self.plan.instances[idx];
        self.store.put_json(
            &Store::index_path(&self.plan.manifest_id, &inst.name),
            &IndexEntry {
                instance: inst.name.clone(),
                kind: inst.kind.clone(),
                key: self.resolved.keys[idx].clone(),
                status: if error.is_some() { "failed" } else { "ok" }.into(),
                unix: now_unix(),
                error,
                log,
                manifest: Some(self.plan.manifest.display().to_string()),
            },
            false,
        )?;
        Ok(())
    }
}
