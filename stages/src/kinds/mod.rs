//! Every stage kind of the project, one declaration module each, and the one list of them
//! ([`registry`]). A declaration ([`StageKind`]) says the kind's name, version, typed parameters
//! and inputs, without libtorch; how it runs is the registry's business:
//!
//! - in process: an [`Implementation`] (a typed `run`, and `merge` for a sharded kind) in a
//!   tch-free crate (`synth`, `ingest`);
//! - in the libtorch worker (`adaptor-torch run-stage`, see [`crate::worker`]): the worker keeps
//!   the same kind of [`Implementation`] table on its side (`adaptor_torch::kinds`).
//!
//! Adding a kind: a module here with its parameter struct ([`stage_params!`](crate::stage_params))
//! and a `StageKind` impl, a line in [`registry`], and for a worker kind its implementation and a
//! line in the worker's table.

pub mod classify;
pub mod encode_image;
pub mod encode_text;
pub mod ingest;
pub mod params;
pub mod preprocess;
pub mod report;
pub mod retrieve;
pub mod segment;
mod shard;
pub mod synth;
pub mod train_adaptor;
pub mod zero_shot;

use std::path::PathBuf;
use std::sync::Arc;

use std::collections::BTreeMap;

use pipeline::stage::ParamError;
use pipeline::{
    BoundInput, InputSpec, ParamSpec, Params, Sharding, Stage, StageContext, StageError,
    StageRegistry,
};

pub use params::{Device, ParamSet, Precision};
pub use shard::Shard;

use crate::worker::WorkerStage;

/// One stage kind's declaration: what the planner, keys and `adaptor stages` need.
pub trait StageKind: 'static {
    /// As written in manifests (`kind = "classify"`) and as the store's top folder.
    const KIND: &'static str;
    /// Bump when the output for the same inputs and parameters changes; part of every key.
    const VERSION: u32;
    /// One line for `adaptor stages`.
    const ABOUT: &'static str;
    /// `Some` when manifests may shard the kind; its implementation then has a merge.
    const SHARDING: Option<Sharding> = None;
    /// The typed parameters, validated once by the planner and read by the implementation.
    type Params: ParamSet;

    fn inputs() -> Vec<InputSpec>;

    /// Checks against what the slots are bound to, at plan time (see [`Stage::check_inputs`]).
    fn check_inputs(_params: &Self::Params, _inputs: &BoundInputs) -> Result<(), ParamError> {
        Ok(())
    }
}

/// Input slot → what it is bound to, as a kind's plan-time [`StageKind::check_inputs`] sees it.
pub type BoundInputs<'a> = BTreeMap<&'a str, Vec<BoundInput<'a>>>;

/// The `records` input of the kinds that read its images: an ingest artifact.
pub(crate) fn records_images_input() -> InputSpec {
    InputSpec::one(
        "records",
        pipeline::InputAccepts::Stage(&["ingest"]),
        "the records table (its `path` column)",
    )
}

/// The `raw` input of the kinds that read images: the folder the records' paths are relative to.
pub(crate) fn raw_images_input() -> InputSpec {
    InputSpec::one(
        "raw",
        pipeline::InputAccepts::DatasetOrStage(&["synth"]),
        "the raw dataset folder the records' image paths are relative to",
    )
}

/// A declaration without its types: what the runner side stores per kind.
#[derive(Clone)]
pub struct Declaration {
    pub kind: &'static str,
    pub version: u32,
    pub about: &'static str,
    pub params: fn() -> Vec<ParamSpec>,
    pub inputs: fn() -> Vec<InputSpec>,
    pub validate: fn(&Params) -> Result<(), ParamError>,
    pub check_inputs: fn(&Params, &BoundInputs) -> Result<(), ParamError>,
    pub sharding: Option<Sharding>,
}

fn validate<P: ParamSet>(params: &Params) -> Result<(), ParamError> {
    P::validate(params).map(drop)
}

fn check_inputs<K: StageKind>(params: &Params, inputs: &BoundInputs) -> Result<(), ParamError> {
    K::check_inputs(&<K::Params as ParamSet>::read(params)?, inputs)
}

impl Declaration {
    /// The parameters with their defaults (a required one, which has none, left out).
    pub fn defaults(&self) -> Params {
        (self.params)()
            .into_iter()
            .filter_map(|s| Some((s.name.to_string(), s.default?)))
            .collect()
    }

    pub const fn of<K: StageKind>() -> Declaration {
        Declaration {
            kind: K::KIND,
            version: K::VERSION,
            about: K::ABOUT,
            params: <K::Params as ParamSet>::specs,
            inputs: K::inputs,
            validate: validate::<K::Params>,
            check_inputs: check_inputs::<K>,
            sharding: K::SHARDING,
        }
    }
}

/// Reads `ctx`'s parameters (validated at plan time) into the kind's struct.
pub fn params_of<K: StageKind>(ctx: &StageContext) -> Result<K::Params, StageError> {
    <K::Params as ParamSet>::read(ctx.params()).map_err(|e| {
        format!(
            "{}: {e} (the runner and this binary disagree on the parameters of `{}`: build them \
             from the same tree)",
            ctx.instance(),
            K::KIND
        )
        .into()
    })
}

pub(crate) type RunFn = Arc<dyn Fn(&StageContext) -> Result<(), StageError> + Send + Sync>;

/// How a kind runs: its typed `run` (and `merge` when sharded), behind its declaration. Used for
/// in-process kinds here and for the worker's kinds in `adaptor-torch`.
#[derive(Clone)]
pub struct Implementation {
    pub decl: Declaration,
    run: RunFn,
}

/// A typed stage function: the kind's parameters, then the context.
pub type Run<K> = fn(&<K as StageKind>::Params, &StageContext) -> Result<(), StageError>;

fn typed<K: StageKind>(f: Run<K>) -> RunFn {
    Arc::new(move |ctx: &StageContext| f(&params_of::<K>(ctx)?, ctx))
}

impl std::fmt::Debug for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Implementation")
            .field("kind", &self.decl.kind)
            .finish()
    }
}

impl Implementation {
    pub fn of<K: StageKind>(run: Run<K>) -> Implementation {
        Implementation {
            decl: Declaration::of::<K>(),
            run: typed::<K>(run),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.decl.kind
    }

    pub fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        (self.run)(ctx)
    }
}

/// Runs `merge` on `ctx`, or says that the kind has none (a merge instance of a kind that
/// cannot be sharded: the planner never makes one, a hand-written job might).
pub(crate) fn merge_with(
    merge: Option<&RunFn>,
    kind: &str,
    ctx: &StageContext,
) -> Result<(), StageError> {
    match merge {
        Some(merge) => merge(ctx),
        None => Err(format!(
            "{}: stage kind `{kind}` cannot merge shards",
            ctx.instance()
        )
        .into()),
    }
}

/// One line of the registry: a kind and where it runs.
#[derive(Clone)]
pub enum Entry {
    /// In the runner's process.
    InProcess(Implementation),
    /// In the libtorch worker, which implements it (`adaptor_torch::kinds::implementations`). A
    /// sharded kind's merge reads and writes tables only, so it runs in the runner's process
    /// (`merge_here`), without starting the worker.
    Worker {
        decl: Declaration,
        merge_here: Option<RunFn>,
    },
}

impl Entry {
    /// A kind the torch worker runs.
    pub fn worker<K: StageKind>() -> Entry {
        Entry::Worker {
            decl: Declaration::of::<K>(),
            merge_here: None,
        }
    }

    /// A sharded kind the torch worker runs, whose shards `merge` joins in the runner's process.
    pub fn worker_merged_here<K: StageKind>(merge: Run<K>) -> Entry {
        Entry::Worker {
            decl: Declaration::of::<K>(),
            merge_here: Some(typed::<K>(merge)),
        }
    }

    pub fn decl(&self) -> &Declaration {
        match self {
            Entry::InProcess(i) => &i.decl,
            Entry::Worker { decl, .. } => decl,
        }
    }
}

/// Every stage kind but the runner's own `command`, one line each.
pub fn registry() -> Vec<Entry> {
    vec![
        Entry::InProcess(Implementation::of::<synth::Synth>(synth::run)),
        Entry::InProcess(Implementation::of::<ingest::Ingest>(ingest::run)),
        Entry::InProcess(Implementation::of::<preprocess::Preprocess>(
            preprocess::run,
        )),
        Entry::worker_merged_here::<encode_text::EncodeText>(encode_text::merge),
        Entry::worker_merged_here::<encode_image::EncodeImage>(encode_image::merge),
        Entry::worker::<train_adaptor::TrainAdaptor>(),
        Entry::worker::<classify::Classify>(),
        Entry::worker::<segment::Segment>(),
        Entry::worker::<zero_shot::ZeroShot>(),
        Entry::worker::<retrieve::Retrieve>(),
        Entry::InProcess(Implementation::of::<report::Report>(report::run)),
    ]
}

/// The kinds that run in the worker, in registry order.
pub fn worker_kinds() -> Vec<Declaration> {
    registry()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Worker { decl, .. } => Some(decl),
            Entry::InProcess(_) => None,
        })
        .collect()
}

/// Registers the in-process kinds.
pub fn register_in_process(reg: &mut StageRegistry) {
    for entry in registry() {
        if let Entry::InProcess(imp) = entry {
            reg.register(Arc::new(InProcessStage(imp)));
        }
    }
}

/// Registers the worker kinds; their runs start `worker` (the `adaptor-torch` binary).
pub fn register_worker(reg: &mut StageRegistry, worker: impl Into<PathBuf>) {
    let worker = worker.into();
    for entry in registry() {
        if let Entry::Worker { decl, merge_here } = entry {
            let stage = WorkerStage::new(decl, worker.clone());
            reg.register(Arc::new(match merge_here {
                Some(merge) => stage.merging_here(merge),
                None => stage,
            }));
        }
    }
}

/// A kind the runner's own process runs.
pub struct InProcessStage(pub Implementation);

impl Stage for InProcessStage {
    fn kind(&self) -> &'static str {
        self.0.decl.kind
    }

    fn version(&self) -> u32 {
        self.0.decl.version
    }

    fn about(&self) -> &'static str {
        self.0.decl.about
    }

    fn params(&self) -> Vec<ParamSpec> {
        (self.0.decl.params)()
    }

    fn inputs(&self) -> Vec<InputSpec> {
        (self.0.decl.inputs)()
    }

    fn validate(&self, params: &Params) -> Result<(), ParamError> {
        (self.0.decl.validate)(params)
    }

    fn check_inputs(&self, params: &Params, inputs: &BoundInputs) -> Result<(), ParamError> {
        (self.0.decl.check_inputs)(params, inputs)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        self.0.run(ctx)
    }

    fn sharding(&self) -> Option<Sharding> {
        self.0.decl.sharding.clone()
    }

    /// The in-process kinds (synth, ingest, preprocess, report) compute without libtorch, and their parallel
    /// work is order-preserving maps: the same bytes at any thread count.
    fn output_depends_on_threads(&self) -> bool {
        false
    }

    fn merge(&self, ctx: &StageContext) -> Result<(), StageError> {
        // No in-process kind is sharded today; a sharded kind's merge is an `Entry::Worker`'s
        // `merge_here`.
        merge_with(None, self.0.decl.kind, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_and_sharded_ones_merge_in_process() {
        let mut seen = std::collections::BTreeSet::new();
        for e in registry() {
            assert!(seen.insert(e.decl().kind), "{} twice", e.decl().kind);
            // A sharded kind has a merge, wherever it runs; the merge runs in this process.
            let merges = match &e {
                Entry::InProcess(_) => false,
                Entry::Worker { merge_here, .. } => merge_here.is_some(),
            };
            assert_eq!(e.decl().sharding.is_some(), merges, "{}", e.decl().kind);
            // Every default passes the kind's own checks.
            let required = (e.decl().params)().iter().any(|s| s.default.is_none());
            if !required {
                (e.decl().validate)(&e.decl().defaults()).unwrap();
            }
        }
    }
}
