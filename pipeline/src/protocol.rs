//! The worker protocol: how the runner hands one stage instance to a process of another binary
//! (the libtorch worker) and hears back from it. One JSON [`Job`] on the worker's stdin; JSON lines
//! on its stdout ([`WorkerMessage`]: log lines, progress, a final error).
//!
//! Out-of-process stages are a runner concept, so the format lives here; what a worker computes
//! does not. The worker rebuilds a [`StageContext`] from the job, with a [`JsonLinesSink`] as its
//! progress sink.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::key::StageKey;
use crate::stage::{
    InputArtifact, InputOrigin, InputSpec, ProgressSink, RemoteInput, StageContext,
};
use crate::value::Params;

/// Version of the job and message formats. The runner and the worker must be built from the same
/// tree; a mismatch is refused with a message saying so. 2: jobs say whether they merge shards.
/// 3: an input's origin is [`InputOrigin`] itself (`{"Stage": {...}}`), keys are checked on read.
/// 4: no merge jobs (merges of shards are tables only; the runner does them in its own process).
/// 5: an input may be remote ([`JobInput::remote`]: read from the store, no local copy).
pub const PROTOCOL: u32 = 5;

/// One stage instance for the worker: everything its `StageContext` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub protocol: u32,
    pub kind: String,
    pub instance: String,
    pub key: StageKey,
    /// The resolved parameters the planner validated (defaults filled in); the worker reads them
    /// into the kind's typed parameters.
    pub params: Params,
    /// Input slot → the artifacts bound to it, in binding order.
    pub inputs: BTreeMap<String, Vec<JobInput>>,
    pub out_dir: PathBuf,
    pub threads: usize,
    /// [`StageContext::resume_dir`], when the runner gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_dir: Option<PathBuf>,
    /// [`StageContext::memory`] in bytes (a job without it, from an older runner, gets
    /// [`crate::stage::DEFAULT_MEMORY`]).
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// [`StageContext::temp_dir`], when the runner gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_dir: Option<PathBuf>,
}

fn default_memory() -> u64 {
    crate::stage::DEFAULT_MEMORY
}

/// One input artifact of a job: where it is and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    pub path: PathBuf,
    pub origin: InputOrigin,
    /// Set when the input is read straight from a remote store (see
    /// [`StageContext::remote`]): `path` then holds no copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteInput>,
}

impl Job {
    /// The job for `ctx`, with the inputs of the declared `slots`.
    pub fn from_context(kind: &str, ctx: &StageContext, slots: &[InputSpec]) -> Job {
        let inputs = slots
            .iter()
            .map(|s| s.name)
            .map(|name| {
                let arts = ctx
                    .inputs(name)
                    .iter()
                    .map(|a| JobInput {
                        path: a.path.clone(),
                        origin: a.origin.clone(),
                        remote: ctx.remote(a).cloned(),
                    })
                    .collect();
                (name.to_string(), arts)
            })
            .collect();
        Job {
            protocol: PROTOCOL,
            kind: kind.to_string(),
            instance: ctx.instance().to_string(),
            key: ctx.key().clone(),
            params: ctx.params().clone(),
            inputs,
            out_dir: ctx.out_dir().to_path_buf(),
            threads: ctx.threads(),
            resume_dir: ctx.resume_dir().map(Path::to_path_buf),
            memory: ctx.memory(),
            temp_dir: ctx.temp_dir().map(Path::to_path_buf),
        }
    }

    /// Reads a job (one JSON document) and checks its protocol version.
    pub fn read(r: impl Read) -> Result<Job, String> {
        let text: serde_json::Value =
            serde_json::from_reader(r).map_err(|e| format!("cannot read the job on stdin: {e}"))?;
        // The version first, so an older runner's job is refused for what it is, not for a field
        // this format renamed.
        let protocol = text.get("protocol").and_then(serde_json::Value::as_u64);
        if protocol != Some(u64::from(PROTOCOL)) {
            return Err(format!(
                "the runner speaks worker protocol {}, this worker {PROTOCOL}: build `adaptor` and \
                 `adaptor-torch` from the same tree",
                protocol.map_or("(none)".to_string(), |p| p.to_string())
            ));
        }
        serde_json::from_value(text).map_err(|e| format!("cannot read the job on stdin: {e}"))
    }

    /// The worker-side context. Its log goes to `sink` only: the runner writes the stage log.
    pub fn into_context(
        self,
        sink: Arc<dyn ProgressSink>,
        cancel: Arc<AtomicBool>,
    ) -> StageContext {
        let remote: Vec<(PathBuf, RemoteInput)> = self
            .inputs
            .values()
            .flatten()
            .filter_map(|a| Some((a.path.clone(), a.remote.clone()?)))
            .collect();
        let inputs = self
            .inputs
            .into_iter()
            .map(|(slot, arts)| {
                let arts = arts
                    .into_iter()
                    .map(|a| InputArtifact {
                        path: a.path,
                        origin: a.origin,
                    })
                    .collect();
                (slot, arts)
            })
            .collect();
        let ctx = StageContext::new(
            self.instance,
            self.key,
            self.params,
            inputs,
            self.out_dir,
            self.threads,
            None,
            sink,
            cancel,
        )
        .with_memory(self.memory);
        let ctx = match self.temp_dir {
            Some(dir) => ctx.with_temp_dir(dir),
            None => ctx,
        };
        let ctx = remote
            .into_iter()
            .fold(ctx, |ctx, (path, r)| ctx.with_remote(path, r));
        match self.resume_dir {
            Some(dir) => ctx.with_resume_dir(dir),
            None => ctx,
        }
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

    fn job() -> Job {
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "records".to_string(),
            vec![JobInput {
                path: "/store/ingest/ab".into(),
                origin: InputOrigin::Stage {
                    kind: "ingest".into(),
                    instance: "ingest[d=rsna]".into(),
                    key: StageKey::parse(&"ab".repeat(32)).unwrap(),
                },
                remote: None,
            }],
        );
        inputs.insert(
            "features".to_string(),
            vec![JobInput {
                path: "/cache/encode-image/ef".into(),
                origin: InputOrigin::Stage {
                    kind: "encode-image".into(),
                    instance: "enc-img".into(),
                    key: StageKey::parse(&"ef".repeat(32)).unwrap(),
                },
                remote: Some(RemoteInput {
                    store: "s3://bucket/p".into(),
                    files: vec![crate::stage::RemoteFile {
                        path: "embeddings.parquet".into(),
                        object: format!("encode-image/{}/a1/embeddings.parquet", "ef".repeat(32)),
                        bytes: 1234,
                        blake3: "00".repeat(32),
                    }],
                }),
            }],
        );
        Job {
            protocol: PROTOCOL,
            kind: "encode-text".into(),
            instance: "enc".into(),
            key: StageKey::parse(&"cd".repeat(32)).unwrap(),
            params: Params::new(),
            inputs,
            out_dir: "/out".into(),
            threads: 2,
            resume_dir: None,
            memory: 3 << 30,
            temp_dir: Some("/staging/tmp".into()),
        }
    }

    #[test]
    fn jobs_round_trip_and_other_protocols_are_refused() {
        let text = serde_json::to_string(&job()).unwrap();
        assert_eq!(Job::read(text.as_bytes()).unwrap(), job());
        let old = text.replace(&format!("\"protocol\":{PROTOCOL}"), "\"protocol\":2");
        let err = Job::read(old.as_bytes()).unwrap_err();
        assert!(
            err.contains(&format!("protocol 2, this worker {PROTOCOL}")),
            "{err}"
        );
        let bad_key = text.replace(&"ab".repeat(32), "not-a-key");
        assert!(Job::read(bad_key.as_bytes()).is_err());
        // A job from a runner before `memory` and `temp_dir` existed still reads.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("memory");
        fields.remove("temp_dir");
        let read = Job::read(old.to_string().as_bytes()).unwrap();
        assert_eq!(
            (read.memory, read.temp_dir),
            (crate::stage::DEFAULT_MEMORY, None)
        );
        let ctx = job().into_context(
            Arc::new(crate::stage::NoProgress),
            Arc::new(AtomicBool::new(false)),
        );
        assert_eq!(ctx.memory(), 3 << 30);
        assert_eq!(ctx.temp_dir(), Some(Path::new("/staging/tmp")));
    }

    #[test]
    fn a_remote_input_reaches_the_workers_context_and_a_local_one_stays_local() {
        let ctx = job().into_context(Arc::new(crate::stage::NoProgress), Arc::default());
        let features = &ctx.inputs("features")[0];
        let remote = ctx.remote(features).expect("remote");
        assert_eq!(remote.store, "s3://bucket/p");
        assert_eq!(remote.file("embeddings.parquet").unwrap().bytes, 1234);
        assert!(ctx.remote(&ctx.inputs("records")[0]).is_none());
        // And back into a job, unchanged.
        let slots = [
            InputSpec::one("features", crate::stage::InputAccepts::Any, ""),
            InputSpec::one("records", crate::stage::InputAccepts::Any, ""),
        ];
        let again = Job::from_context("encode-text", &ctx, &slots);
        assert_eq!(again.inputs, job().inputs);
    }
}
