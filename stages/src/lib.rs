//! Stage implementations: synthetic datasets, ingest of the four raw datasets, and the image and
//! mask code they share. Each stage is a thin adapter over a library function the binary can also
//! call directly (`adaptor synth`, see [`synth::generate`]).

pub mod encode;
pub mod error;
pub mod evaluate;
pub mod images;
pub mod ingest;
pub mod masks;
pub mod pretrain;
pub mod split;
mod stage_impls;
pub mod synth;
pub mod worker;

use std::sync::Arc;

pub use encode::register_torch;
pub use error::{Error, IngestError, Result};
pub use stage_impls::{IngestStage, SynthStage};

/// Registers every stage kind this crate implements.
pub fn register(reg: &mut pipeline::StageRegistry) {
    reg.register(Arc::new(SynthStage));
    reg.register(Arc::new(IngestStage));
}
