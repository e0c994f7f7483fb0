//! Stage implementations: synthetic datasets, ingest of the four raw datasets, and the image and
//! mask code they share; the declarations of every stage kind ([`kinds`]) and their registry.
//! Each stage is a thin adapter over a library function the binary can also call directly
//! (`adaptor synth`, see [`synth::generate`]).

pub mod encode;
pub mod error;
pub mod evaluate;
pub mod images;
pub mod ingest;
pub mod kinds;
pub mod masks;
pub mod preprocess;
pub mod pretrain;
pub mod prompts;
pub mod split;
pub mod synth;
pub mod worker;

pub use error::{Error, IngestError, Result};
pub use kinds::{registry, Entry, Implementation, StageKind};

/// Registers every stage kind this process runs itself (`synth`, `ingest`).
pub fn register(reg: &mut pipeline::StageRegistry) {
    kinds::register_in_process(reg);
}

/// Registers the kinds that run in the libtorch worker; their runs start `worker` (the
/// `adaptor-torch` binary).
pub fn register_torch(reg: &mut pipeline::StageRegistry, worker: impl Into<std::path::PathBuf>) {
    kinds::register_worker(reg, worker);
}
