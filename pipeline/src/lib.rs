//! The runner library: manifests, plans, content keys, the artifact store and executors.
//!
//! It knows how to run stages, never what a stage computes: nothing here depends on tensors,
//! images or datasets.

pub mod builtin;
pub mod error;
pub mod executor;
pub mod fingerprint;
pub mod key;
pub mod lease;
pub mod manifest;
pub mod ops;
pub mod plan;
pub mod process;
pub mod protocol;
pub mod s3uploads;
pub mod slurm;
pub mod stage;
pub mod store;
pub mod value;

pub use error::{Error, ErrorClass, ManifestError, Result};
pub use executor::{Resolved, RunOptions, RunReport, State};
pub use fingerprint::{Check, FingerprintCache};
pub use key::{KeyRecipe, StageKey};
pub use plan::Plan;
pub use stage::{
    BoundInput, InputAccepts, InputArtifact, InputOrigin, InputSpec, NoProgress, Outcome,
    ParamError, ParamSpec, ParamType, ProgressSink, RemoteFile, RemoteInput, RunEvent, Sharding,
    Stage, StageContext, StageError, StageRegistry, SHARDS_SLOT,
};
pub use store::{Store, StoreSettings, StoreUrl};
pub use value::{Params, Value};
