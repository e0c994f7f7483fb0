//! What the two encode kinds (`encode-text`, `encode-image`: a records table through a frozen
//! backbone into a Parquet embedding table, one row per record, same keys in the same order,
//! reference G.3) share: file names, the run settings, sharding. Each kind's declaration is in
//! [`crate::kinds`]; the work runs in the `adaptor-torch` worker.

use pipeline::Sharding;

use crate::kinds::encode_image::{EncodeImage, ImagePooling, Normalize};
use crate::kinds::encode_text::{EncodeText, TextPooling};
use crate::kinds::params::int_in;
use crate::kinds::{Declaration, Device, Precision};

pub use crate::kinds::Shard;

pub const ENCODE_TEXT: &str = "encode-text";
pub const ENCODE_IMAGE: &str = "encode-image";

/// One vector per record: `key`, `split`, `embedding` (FixedSizeList<Float32, D>).
pub const EMBEDDINGS_FILE: &str = "embeddings.parquet";
/// Token-level output: `key`, `split`, `tokens` (L × D), `mask` (L).
pub const TOKENS_FILE: &str = "tokens.parquet";

/// Backbone kinds (`[backbones.NAME] kind = ...`) each stage accepts.
pub const TEXT_BACKBONES: &[&str] = &["bert"];
pub const IMAGE_BACKBONES: &[&str] = &["dinov2", "resnet-ae"];

pub const TEXT_POOLINGS: &[&str] = TextPooling::NAMES;
pub const IMAGE_POOLINGS: &[&str] = ImagePooling::NAMES;
pub const NORMALIZATIONS: &[&str] = Normalize::NAMES;
pub const DEVICES: &[&str] = Device::NAMES;
pub const PRECISIONS: &[&str] = Precision::NAMES;

/// Both encode kinds shard by rows: each shard encodes `shard = "i/N"`, and the worker's merge
/// concatenates the shard tables into the table an unsharded run writes.
pub const SHARDING: Sharding = Sharding {
    param: "shard",
    merge: "concatenates the shard tables in row order into the unsharded table",
};

crate::param_group! {
    /// How an encode kind runs: batches, device, precision, which rows.
    pub struct EncodeRun {
        batch_size: i64, check int_in(1, 65536);
            "items per forward pass (texts are padded to the longest of their batch)",
        device: Device;
            "where the backbone runs: auto (CUDA when libtorch sees a GPU), cpu or cuda",
        precision: Precision;
            "fp32, or bf16 weights and activations (tables are float32 either way)",
        shard: Shard;
            "i/n: this instance encodes the i-th of n contiguous row ranges; the n shards together \
             make the table",
    }
}

impl EncodeRun {
    pub const DEFAULT: EncodeRun = EncodeRun {
        batch_size: 64,
        device: Device::Auto,
        precision: Precision::Fp32,
        shard: Shard::WHOLE,
    };
}

pub const TEXT: Declaration = Declaration::of::<EncodeText>();
pub const IMAGE: Declaration = Declaration::of::<EncodeImage>();

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::Value;

    #[test]
    fn declarations_validate_their_parameters() {
        let mut p = TEXT.defaults();
        p.insert("shard".into(), Value::Str("3/2".into()));
        let e = (TEXT.validate)(&p).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shard"), "{e}");
        let mut p = IMAGE.defaults();
        p.insert("batch_size".into(), Value::Int(0));
        let e = (IMAGE.validate)(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter `batch_size`: must be in 1..=65536, got 0"
        );
        let names: Vec<&str> = (IMAGE.params)().iter().map(|s| s.name).collect();
        assert!(names.contains(&"normalize") && names.contains(&"shard"));
    }
}
