//! The libtorch side of the pipeline: the frozen backbones (BERT family, DINOv2, the
//! torchxrayvision ResNet autoencoder) in tch, the encode stages' implementations, embedding
//! tables, and what the `adaptor-torch` worker binary runs.
//!
//! The `adaptor` binary never links this crate (loading libtorch costs about 0.34 s per process):
//! it knows the torch stages through their declarations in `stages::kinds` and runs them by
//! starting `adaptor-torch run-stage` (`stages::worker`); [`kinds`] is the worker's table of them.

pub mod adhoc;
pub mod bert;
pub mod dinov2;
pub mod encoder;
pub mod error;
pub mod evaluate;
pub mod kinds;
pub mod merge;
pub mod nn;
pub mod pickle;
pub mod preprocess;
pub mod pretrain;
pub mod report;
pub mod resnet_ae;
pub mod segment;
pub mod stages_impl;
pub mod table;
pub mod weights;

// The declarations and the worker protocol live in the `stages` crate (no tch), so that the
// `adaptor` binary can plan, key and start these stages without loading libtorch.
pub use stages::{encode, worker};

pub use error::{Error, Result};
