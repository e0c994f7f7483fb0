//! Stage kinds whose work runs in a separate worker process (`adaptor-torch run-stage`), so that
//! the `adaptor` binary never loads libtorch (about 0.34 s per process start; ARCHITECTURE.md).
//!
//! The declaration of such a stage (kind, version, parameters, inputs, checks) lives on this side,
//! without tch, so planning, validation and keys work in the main binary. Its `run` starts the
//! worker, writes one JSON [`Job`] to its stdin, and relays the JSON lines the worker prints on
//! stdout ([`WorkerMessage`]: log lines, progress, a final error) to the [`StageContext`]. The
//! worker rebuilds a `StageContext` from the job, with a [`JsonLinesSink`] as its progress sink.
//!
//! This file only depends on `pipeline`, `serde` and `serde_json`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use pipeline::process::{self, Stream};
use pipeline::{
    InputArtifact, InputOrigin, InputSpec, ParamSpec, Params, ProgressSink, Sharding, Stage,
    StageContext, StageError, StageKey, SHARDS_SLOT,
};
use serde::{Deserialize, Serialize};

/// Version of the job and message formats. The runner and the worker must be built from the same
/// tree; a mismatch is refused with a message saying so. 2: jobs say whether they merge shards.
pub const PROTOCOL: u32 = 2;

/// One stage instance for the worker: everything its `StageContext` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub protocol: u32,
    pub kind: String,
    pub instance: String,
    pub key: String,
    pub params: Params,
    /// Input slot → the artifacts bound to it, in binding order.
    pub inputs: BTreeMap<String, Vec<JobInput>>,
    pub out_dir: PathBuf,
    pub threads: usize,
    /// [`StageContext::resume_dir`], when the runner gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_dir: Option<PathBuf>,
    /// Merge the shards bound to [`SHARDS_SLOT`] instead of running the stage ([`Stage::merge`]).
    #[serde(default)]
    pub merge: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    pub path: PathBuf,
    pub origin: JobOrigin,
}

/// [`InputOrigin`] in a serialisable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum JobOrigin {
    External {
        group: String,
        name: String,
        kind: String,
        params: Params,
    },
    Stage {
        kind: String,
        instance: String,
        key: String,
    },
}

impl From<&InputOrigin> for JobOrigin {
    fn from(o: &InputOrigin) -> Self {
        match o {
            InputOrigin::External {
                group,
                name,
                kind,
                params,
            } => JobOrigin::External {
                group: group.clone(),
                name: name.clone(),
                kind: kind.clone(),
                params: params.clone(),
            },
            InputOrigin::Stage {
                kind,
                instance,
                key,
            } => JobOrigin::Stage {
                kind: kind.clone(),
                instance: instance.clone(),
                key: key.as_str().to_string(),
            },
        }
    }
}

impl JobOrigin {
    fn into_origin(self) -> Result<InputOrigin, String> {
        Ok(match self {
            JobOrigin::External {
                group,
                name,
                kind,
                params,
            } => InputOrigin::External {
                group,
                name,
                kind,
                params,
            },
            JobOrigin::Stage {
                kind,
                instance,
                key,
            } => InputOrigin::Stage {
                key: StageKey::parse(&key)
                    .ok_or_else(|| format!("job: input key `{key}` of {instance} is not a key"))?,
                kind,
                instance,
            },
        })
    }
}

impl Job {
    /// The job for `ctx`, with the inputs of the declared `slots`.
    pub fn from_context(kind: &str, ctx: &StageContext, slots: &[InputSpec]) -> Job {
        Self::with_slots(kind, ctx, slots.iter().map(|s| s.name), false)
    }

    /// The merge job for `ctx`: the declared `slots` and the shards ([`SHARDS_SLOT`]).
    pub fn merge_from_context(kind: &str, ctx: &StageContext, slots: &[InputSpec]) -> Job {
        let names = slots.iter().map(|s| s.name).chain([SHARDS_SLOT]);
        Self::with_slots(kind, ctx, names, true)
    }

    fn with_slots<'a>(
        kind: &str,
        ctx: &StageContext,
        slots: impl Iterator<Item = &'a str>,
        merge: bool,
    ) -> Job {
        let inputs = slots
            .map(|name| {
                let arts = ctx
                    .inputs(name)
                    .iter()
                    .map(|a| JobInput {
                        path: a.path.clone(),
                        origin: JobOrigin::from(&a.origin),
                    })
                    .collect();
                (name.to_string(), arts)
            })
            .collect();
        Job {
            protocol: PROTOCOL,
            kind: kind.to_string(),
            instance: ctx.instance().to_string(),
            key: ctx.key().as_str().to_string(),
            params: ctx.params().clone(),
            inputs,
            out_dir: ctx.out_dir().to_path_buf(),
            threads: ctx.threads(),
            resume_dir: ctx.resume_dir().map(Path::to_path_buf),
            merge,
        }
    }

    /// Reads a job (one JSON document) and checks its protocol version.
    pub fn read(r: impl Read) -> Result<Job, String> {
        let job: Job =
            serde_json::from_reader(r).map_err(|e| format!("cannot read the job on stdin: {e}"))?;
        if job.protocol != PROTOCOL {
            return Err(format!(
                "the runner speaks worker protocol {}, this worker {PROTOCOL}: build `adaptor` and \
                 `adaptor-torch` from the same tree",
                job.protocol
            ));
        }
        Ok(job)
    }

    /// The worker-side context. Its log goes to `sink` only: the runner writes the stage log.
    pub fn into_context(
        self,
        sink: Arc<dyn ProgressSink>,
        cancel: Arc<AtomicBool>,
    ) -> Result<StageContext, String> {
        let key = StageKey::parse(&self.key)
            .ok_or_else(|| format!("job: `{}` is not a stage key", self.key))?;
        let mut inputs = BTreeMap::new();
        for (slot, arts) in self.inputs {
            let arts = arts
                .into_iter()
                .map(|a| {
                    Ok(InputArtifact {
                        path: a.path,
                        origin: a.origin.into_origin()?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            inputs.insert(slot, arts);
        }
        let ctx = StageContext::new(
            self.instance,
            key,
            self.params,
            inputs,
            self.out_dir,
            self.threads,
            None,
            sink,
            cancel,
        );
        Ok(match self.resume_dir {
            Some(dir) => ctx.with_resume_dir(dir),
            None => ctx,
        })
    }
}

/// One line the worker prints on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerMessage {
    /// `{"log": "..."}`
    Log(String),
    /// `{"progress": {"done": n, "total": n, "unit": "images"}}`
    Progress { done: u64, total: u64, unit: String },
    /// `{"error": "..."}`: the stage failed with this message (then a non-zero exit).
    Error(String),
}

impl WorkerMessage {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("messages serialise")
    }
}

/// The worker's progress sink: each report is one JSON line on its writer (stdout).
pub struct JsonLinesSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl JsonLinesSink {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        JsonLinesSink {
            out: Mutex::new(out),
        }
    }

    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    pub fn send(&self, msg: &WorkerMessage) {
        let mut out = self.out.lock().expect("sink lock");
        // A closed pipe means the runner is gone; the worker is about to be killed anyway.
        let _ = writeln!(out, "{}", msg.to_line());
        let _ = out.flush();
    }
}

impl ProgressSink for JsonLinesSink {
    fn progress(&self, _instance: &str, done: u64, total: u64, unit: &str) {
        self.send(&WorkerMessage::Progress {
            done,
            total,
            unit: unit.to_string(),
        });
    }

    fn log(&self, _instance: &str, line: &str) {
        self.send(&WorkerMessage::Log(line.to_string()));
    }
}

/// A stage kind's declaration, shared by the runner side and the worker.
#[derive(Clone, Copy)]
pub struct StageDecl {
    pub kind: &'static str,
    pub version: u32,
    pub about: &'static str,
    pub params: fn() -> Vec<ParamSpec>,
    pub inputs: fn() -> Vec<InputSpec>,
    pub validate: fn(&Params) -> Result<(), String>,
}

/// A stage's work done in the runner's own process (no libtorch: the `artifacts` crate).
pub type InProcess = fn(&StageContext) -> Result<(), StageError>;

/// A stage whose `run` (and `merge`, when it can be sharded) is delegated to the worker binary,
/// unless it is given an [`InProcess`] function for it.
pub struct WorkerStage {
    decl: StageDecl,
    worker: PathBuf,
    sharding: Option<Sharding>,
    run_here: Option<InProcess>,
    merge_here: Option<InProcess>,
}

impl WorkerStage {
    pub fn new(decl: StageDecl, worker: impl Into<PathBuf>) -> Self {
        WorkerStage {
            decl,
            worker: worker.into(),
            sharding: None,
            run_here: None,
            merge_here: None,
        }
    }

    /// Runs the stage in this process with `run` instead of starting the worker.
    pub fn run_in_process(mut self, run: InProcess) -> Self {
        self.run_here = Some(run);
        self
    }

    /// Merges shards in this process with `merge` instead of starting the worker.
    pub fn merge_in_process(mut self, merge: InProcess) -> Self {
        self.merge_here = Some(merge);
        self
    }

    /// Lets manifests shard this stage; the worker must implement the merge for its kind.
    pub fn with_sharding(mut self, sharding: Sharding) -> Self {
        self.sharding = Some(sharding);
        self
    }

    pub fn worker(&self) -> &Path {
        &self.worker
    }
}

impl Stage for WorkerStage {
    fn kind(&self) -> &'static str {
        self.decl.kind
    }

    fn version(&self) -> u32 {
        self.decl.version
    }

    fn about(&self) -> &'static str {
        self.decl.about
    }

    fn params(&self) -> Vec<ParamSpec> {
        (self.decl.params)()
    }

    fn inputs(&self) -> Vec<InputSpec> {
        (self.decl.inputs)()
    }

    fn validate(&self, params: &Params) -> Result<(), String> {
        (self.decl.validate)(params)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        if let Some(run) = self.run_here {
            return run(ctx);
        }
        let job = Job::from_context(self.decl.kind, ctx, &(self.decl.inputs)());
        run_worker(&self.worker, &job, ctx)
    }

    fn sharding(&self) -> Option<Sharding> {
        self.sharding.clone()
    }

    fn merge(&self, ctx: &StageContext) -> Result<(), StageError> {
        if self.sharding.is_none() {
            return Err(format!(
                "{}: stage kind `{}` cannot merge shards",
                ctx.instance(),
                self.decl.kind
            )
            .into());
        }
        if let Some(merge) = self.merge_here {
            return merge(ctx);
        }
        let job = Job::merge_from_context(self.decl.kind, ctx, &(self.decl.inputs)());
        run_worker(&self.worker, &job, ctx)
    }
}

/// Starts `worker run-stage`, hands it `job`, relays its messages to `ctx` until it exits, and
/// kills it when the run is cancelled or the instance times out. The worker runs in a process group
/// of its own that dies with the runner ([`pipeline::process`]).
pub fn run_worker(worker: &Path, job: &Job, ctx: &StageContext) -> Result<(), StageError> {
    let mut cmd = Command::new(worker);
    cmd.arg("run-stage");
    let mut text = serde_json::to_vec(job).expect("jobs serialise");
    text.push(b'\n');
    let mut error: Option<String> = None;
    let mut tail = VecDeque::<String>::new();
    let finished = process::run_group(cmd, Some(text), ctx, |stream, line| match stream {
        Stream::Stdout => match serde_json::from_str::<WorkerMessage>(&line) {
            Ok(WorkerMessage::Log(l)) => ctx.log(l),
            Ok(WorkerMessage::Progress { done, total, unit }) => ctx.progress(done, total, &unit),
            Ok(WorkerMessage::Error(e)) => error = Some(e),
            // Something else wrote to stdout (a library): keep it in the log.
            Err(_) => ctx.log(line),
        },
        Stream::Stderr => {
            ctx.log(format!("worker stderr: {line}"));
            tail.push_back(line);
            if tail.len() > 5 {
                tail.pop_front();
            }
        }
    })
    .map_err(|e| {
        format!(
            "cannot start the torch worker {}: {e} (it is the `adaptor-torch` binary; build it \
             with `cargo build -p adaptor-torch`)",
            worker.display()
        )
    })?;
    for note in &finished.notes {
        ctx.log(note);
    }
    if finished.stopped || (!finished.status.success() && ctx.is_cancelled()) {
        // Says "cancelled" or "timed out after ...".
        ctx.check_cancelled()?;
    }
    Err(match (finished.status.success(), error) {
        (true, None) => return Ok(()),
        // The worker's own message comes first; how it ended is added when that says more.
        (_, Some(e)) if finished.status.code().is_some() => e,
        (_, Some(e)) => format!(
            "{e} (then the torch worker {})",
            process::describe_exit(&finished.status)
        ),
        (false, None) => {
            let mut msg = format!(
                "the torch worker {} {}",
                worker.display(),
                process::describe_exit(&finished.status)
            );
            if !tail.is_empty() {
                msg.push_str(": ");
                msg.push_str(&tail.into_iter().collect::<Vec<_>>().join(" | "));
            }
            msg
        }
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_shape() {
        assert_eq!(WorkerMessage::Log("hi".into()).to_line(), r#"{"log":"hi"}"#);
        assert_eq!(
            WorkerMessage::Progress {
                done: 3,
                total: 10,
                unit: "images".into()
            }
            .to_line(),
            r#"{"progress":{"done":3,"total":10,"unit":"images"}}"#
        );
        assert_eq!(
            serde_json::from_str::<WorkerMessage>(r#"{"error":"boom"}"#).unwrap(),
            WorkerMessage::Error("boom".into())
        );
    }

    /// A stand-in for `adaptor-torch` that misbehaves on purpose (a shell script: the real worker
    /// cannot be made to print invalid UTF-8 or crash on demand), run by the real relay code.
    fn misbehaving_worker(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("worker.sh");
        std::fs::write(&path, format!("#!/bin/sh\ncat > /dev/null\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn context(dir: &Path) -> StageContext {
        StageContext::new(
            "enc".into(),
            StageKey::parse(&"cd".repeat(32)).unwrap(),
            Params::new(),
            BTreeMap::new(),
            dir.join("out"),
            1,
            None,
            Arc::new(pipeline::NoProgress),
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn job() -> Job {
        Job {
            protocol: PROTOCOL,
            kind: "encode-text".into(),
            instance: "enc".into(),
            key: "cd".repeat(32),
            params: Params::new(),
            inputs: BTreeMap::new(),
            out_dir: "/nonexistent".into(),
            threads: 1,
            resume_dir: None,
            merge: false,
        }
    }

    #[test]
    fn the_final_error_survives_bytes_that_are_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let worker = misbehaving_worker(
            dir.path(),
            r#"printf '\377\376 a library wrote this\n'; printf '\377\n' >&2; echo '{"error":"records.parquet: row 3: bad key"}'; printf '\376 after'; exit 1"#,
        );
        let err = run_worker(&worker, &job(), &context(dir.path()))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "records.parquet: row 3: bad key");
    }

    #[test]
    fn a_worker_killed_by_a_signal_is_named_after_its_own_message() {
        let dir = tempfile::tempdir().unwrap();
        let worker = misbehaving_worker(
            dir.path(),
            r#"echo '{"error":"cuda: out of memory"}'; kill -SEGV $$"#,
        );
        let err = run_worker(&worker, &job(), &context(dir.path()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cuda: out of memory (then the torch worker was killed by SIGSEGV)"
        );
        let silent = misbehaving_worker(dir.path(), "echo oops >&2; kill -KILL $$");
        let err = run_worker(&silent, &job(), &context(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("was killed by SIGKILL") && err.ends_with(": oops"),
            "{err}"
        );
    }
}
