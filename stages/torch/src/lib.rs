//! The libtorch side of the pipeline: the frozen backbones (BERT family, DINOv2, the
//! torchxrayvision ResNet autoencoder) in tch, the encode, pre-training and evaluation stages'
//! implementations, and what the `adaptor-torch` worker binary runs.
//!
//! The `adaptor` binary never links this crate (loading libtorch costs about 0.34 s per process):
//! it knows the torch stages through their declarations in `stages::kinds` and runs them by
//! starting `adaptor-torch run-stage` (`stages::worker`); [`kinds`] is the worker's table of them.

pub mod adhoc;
pub mod bert;
pub mod dinov2;
pub mod encode;
pub mod encoder;
pub mod error;
pub mod evaluate;
pub mod image_source;
pub mod kinds;
pub mod nn;
pub mod pickle;
pub mod prefetch;
pub mod preprocess;
pub mod pretrain;
pub mod resnet_ae;
pub mod retrieve;
pub mod segment;
pub mod weights;
pub mod zeroshot;

pub use error::{Error, Result};

#[cfg(test)]
mod tests {
    /// `artifacts` names other stages' files without depending on their declarations.
    #[test]
    fn the_artifacts_file_names_are_the_declarations() {
        use artifacts::files as f;
        let pairs = [
            (f::ENCODE_TEXT, stages::encode::ENCODE_TEXT),
            (f::ENCODE_IMAGE, stages::encode::ENCODE_IMAGE),
            (f::RECORDS, stages::ingest::RECORDS),
            (f::EMBEDDINGS_FILE, stages::encode::EMBEDDINGS_FILE),
            (f::TOKENS_FILE, stages::encode::TOKENS_FILE),
            (f::PROVENANCE_FILE, stages::pretrain::PROVENANCE_FILE),
            (f::PRETRAIN_REPORT, train::pretrain::REPORT),
            (f::TRAINING_CURVE, train::pretrain::CURVE),
            (f::RESULT_FILE, stages::evaluate::RESULT_FILE),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours, theirs);
        }
    }
}
