//! Stage kinds whose work runs in a separate worker process (`adaptor-torch run-stage`), so that
//! the `adaptor` binary never loads libtorch (about 0.34 s per process start; ARCHITECTURE.md).
//!
//! The declaration of such a kind lives on this side, without tch ([`crate::kinds`]), so
//! planning, validation and keys work in the main binary. Its `run` starts the worker, writes one
//! JSON [`Job`] to its stdin, and relays the JSON lines the worker prints on stdout
//! ([`WorkerMessage`]) to the [`StageContext`]; the format is the runner's
//! ([`pipeline::protocol`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;

use pipeline::process::{self, Stream};
use pipeline::protocol::{Job, WorkerMessage};
use pipeline::stage::ParamError;
use pipeline::{InputSpec, ParamSpec, Params, Sharding, Stage, StageContext, StageError};

use crate::kinds::{Declaration, RunFn};

/// A stage whose `run` is delegated to the worker binary (a merge of its shards runs here).
pub struct WorkerStage {
    decl: Declaration,
    worker: PathBuf,
    /// The merge of shards, run in this process ([`crate::kinds::Entry::Worker`]).
    merge_here: Option<RunFn>,
}

impl WorkerStage {
    /// The kind `decl`, run by `worker`; a sharded kind's merge is given by [`Self::merging_here`].
    pub fn new(decl: Declaration, worker: impl Into<PathBuf>) -> Self {
        WorkerStage {
            decl,
            worker: worker.into(),
            merge_here: None,
        }
    }

    /// Merges this kind's shards with `merge`, in this process.
    pub fn merging_here(mut self, merge: RunFn) -> Self {
        self.merge_here = Some(merge);
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

    fn validate(&self, params: &Params) -> Result<(), ParamError> {
        (self.decl.validate)(params)
    }

    fn check_inputs(
        &self,
        params: &Params,
        inputs: &crate::kinds::BoundInputs,
    ) -> Result<(), ParamError> {
        (self.decl.check_inputs)(params, inputs)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let job = Job::from_context(self.decl.kind, ctx, &(self.decl.inputs)());
        run_worker(&self.worker, &job, ctx)
    }

    fn sharding(&self) -> Option<Sharding> {
        self.decl.sharding.clone()
    }

    fn merge(&self, ctx: &StageContext) -> Result<(), StageError> {
        crate::kinds::merge_with(self.merge_here.as_ref(), self.decl.kind, ctx)
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
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;
    use pipeline::StageKey;

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
        let dir = Path::new("/nonexistent");
        Job::from_context("encode-text", &context(dir), &[])
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
