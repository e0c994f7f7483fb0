//! The contract between the runner and a stage implementation.
//!
//! A stage declares its kind, version, parameters and inputs; the planner validates manifests
//! against that declaration. At run time the stage sees only a [`StageContext`]: its resolved
//! parameters, its inputs as local directories, and an empty output directory. It never reads the
//! manifest, the environment or the store itself.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::key::StageKey;
use crate::value::Params;

mod context;
mod limits;
mod progress;
mod registry;
mod spec;

pub use context::{Activity, StageContext};
pub use limits::{
    format_bytes, format_duration, parse_duration, parse_memory, parse_threads, Limits,
    DEFAULT_MEMORY, DEFAULT_THREADS, DEFAULT_WATCHDOG, MAX_THREADS, MIN_MEMORY, RUNNER_PARAMS,
};
pub use progress::{NoProgress, Outcome, ProgressSink, RunEvent};
pub use registry::StageRegistry;
pub use spec::{BoundInput, InputAccepts, InputSpec, ParamError, ParamSpec, ParamType};

/// The error a stage returns. Its message is shown to the user and written to the stage's log, so it
/// names the file, row or field at fault.
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The input slot through which a merge instance sees its shards' artifacts, in shard order.
pub const SHARDS_SLOT: &str = "shards";

/// A stage kind that can be split into shards (`shards = N` under `[stages.NAME]`) and merged back.
///
/// The planner turns such a stage into N shard instances, each with parameter `param` set to
/// `"i/N"`, and one merge instance with the stage's own name and parameters, which has the same
/// inputs plus the N shard artifacts under [`SHARDS_SLOT`] and runs [`Stage::merge`]. Its artifact
/// must equal what an unsharded instance would have written.
#[derive(Debug, Clone, PartialEq)]
pub struct Sharding {
    /// A string parameter (`shard`) that takes `"i/n"`: which part of the work an instance does.
    pub param: &'static str,
    /// What the merge does, for `adaptor stages` and docs.
    pub merge: &'static str,
}

/// One stage kind. Implementations live in the `stages` crate.
pub trait Stage: Send + Sync {
    /// The stage kind, as written in manifests (`kind = "ingest"`). Also the top folder of its
    /// artifacts in the store.
    fn kind(&self) -> &'static str;

    /// Bump when the stage's output for the same inputs and parameters changes (a bug fix, a new
    /// column): every artifact of this kind then becomes stale. Part of the key.
    fn version(&self) -> u32;

    /// One line for `--help` and `adaptor stages`.
    fn about(&self) -> &'static str;

    fn params(&self) -> Vec<ParamSpec>;

    fn inputs(&self) -> Vec<InputSpec>;

    /// Checks beyond types (ranges, combinations), naming the parameter at fault.
    fn validate(&self, _params: &Params) -> Result<(), ParamError> {
        Ok(())
    }

    /// Checks of the instance against what its slots are bound to (an upstream stage's parameters,
    /// say), at plan time; `ParamError::key` names the slot at fault. Slots map to their bound
    /// inputs in binding order.
    fn check_inputs(
        &self,
        _params: &Params,
        _inputs: &std::collections::BTreeMap<&str, Vec<BoundInput<'_>>>,
    ) -> Result<(), ParamError> {
        Ok(())
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError>;

    /// Whether the artifact's bytes may change with the CPU thread count (libtorch's reductions
    /// split by it). Then the instance runs at exactly its `threads` ([`DEFAULT_THREADS`] unless
    /// the manifest sets it), and a count other than the default is part of its key. `false` for a
    /// kind whose parallel work is order-preserving maps: it takes its share of the cores.
    fn output_depends_on_threads(&self) -> bool {
        true
    }

    /// `Some` when manifests may write `shards = N` for this kind (see [`Sharding`]).
    fn sharding(&self) -> Option<Sharding> {
        None
    }

    /// Builds the whole artifact from the shards' artifacts (input [`SHARDS_SLOT`], in shard
    /// order); the other inputs and the parameters are the unsharded instance's. Only called for
    /// kinds whose [`Stage::sharding`] is `Some`.
    fn merge(&self, ctx: &StageContext) -> Result<(), StageError> {
        Err(format!(
            "{}: stage kind `{}` cannot merge shards",
            ctx.instance(),
            self.kind()
        )
        .into())
    }
}

/// Where an input came from. Serialisable: out-of-process workers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InputOrigin {
    /// A folder declared in the manifest (`group` is `datasets` or `backbones`).
    External {
        group: String,
        name: String,
        kind: String,
        params: Params,
    },
    /// The artifact of another stage instance.
    Stage {
        kind: String,
        instance: String,
        key: StageKey,
    },
}

/// An input as the stage sees it: a local directory, read-only by convention.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub path: PathBuf,
    pub origin: InputOrigin,
}

/// Where an input read straight from a remote store lives (a slot declared
/// [`InputSpec::streamed`], on an S3 store, without a cache copy): the store's URL and each file of
/// the artifact with its object (the attempt folder included) and the size and digest its
/// `_manifest.json` records. The stage streams the files and checks each digest as it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteInput {
    /// `s3://bucket/prefix`, as the manifest names the store.
    pub store: String,
    pub files: Vec<RemoteFile>,
}

/// One file of a [`RemoteInput`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Its path inside the artifact (`embeddings.parquet`).
    pub path: String,
    /// Its object, relative to the store's prefix (`encode-image/<key>/<attempt>/embeddings.parquet`).
    pub object: String,
    pub bytes: u64,
    pub blake3: String,
}

impl RemoteInput {
    /// The file at `path` inside the artifact.
    pub fn file(&self, path: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

impl InputArtifact {
    /// How the stage's log and errors name the input: the external folder's name (`rsna`) or the
    /// upstream instance (`encode[dataset=rsna]`).
    pub fn name(&self) -> &str {
        match &self.origin {
            InputOrigin::External { name, .. } => name,
            InputOrigin::Stage { instance, .. } => instance,
        }
    }

    /// The `kind` of an external input (`mimic-cxr`, `bert`, ...) or the stage kind that produced it.
    pub fn kind(&self) -> &str {
        match &self.origin {
            InputOrigin::External { kind, .. } => kind,
            InputOrigin::Stage { kind, .. } => kind,
        }
    }
}
