//! Declarations of the encode stages, `encode-text` and `encode-image`: a records table through a
//! frozen backbone into a Parquet embedding table (`embeddings.parquet`, or `tokens.parquet` for
//! token-level output), one row per record, same keys in the same order (reference G.3).
//!
//! The work runs in the `adaptor-torch` worker ([`crate::worker`]); this file holds what the
//! runner needs without libtorch: parameters, inputs, checks, file names.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use pipeline::{InputAccepts, InputSpec, ParamSpec, ParamType, Params, StageRegistry, Value};

use crate::worker::{StageDecl, WorkerStage};

pub const ENCODE_TEXT: &str = "encode-text";
pub const ENCODE_IMAGE: &str = "encode-image";

/// One vector per record: `key`, `split`, `embedding` (FixedSizeList<Float32, D>).
pub const EMBEDDINGS_FILE: &str = "embeddings.parquet";
/// Token-level output: `key`, `split`, `tokens` (L × D), `mask` (L).
pub const TOKENS_FILE: &str = "tokens.parquet";

/// Backbone kinds (`[backbones.NAME] kind = ...`) each stage accepts.
pub const TEXT_BACKBONES: &[&str] = &["bert"];
pub const IMAGE_BACKBONES: &[&str] = &["dinov2", "resnet-ae"];

pub const TEXT_POOLINGS: &[&str] = &["pooler", "cls", "mean", "tokens"];
/// `auto`: the original's output per backbone (DINOv2: `cls`; ResNet-AE: `mean`).
pub const IMAGE_POOLINGS: &[&str] = &["auto", "cls", "mean", "tokens"];
pub const NORMALIZATIONS: &[&str] = &["imagenet", "half"];
pub const DEVICES: &[&str] = &["auto", "cpu", "cuda"];
pub const PRECISIONS: &[&str] = &["fp32", "bf16"];

fn common_params(batch_size: i64) -> Vec<ParamSpec> {
    vec![
        ParamSpec::optional(
            "batch_size",
            ParamType::Int,
            Value::Int(batch_size),
            "items per forward pass (texts are padded to the longest of their batch)",
        ),
        ParamSpec::optional(
            "device",
            ParamType::Choice(DEVICES),
            Value::Str("auto".into()),
            "where the backbone runs: auto (CUDA when libtorch sees a GPU), cpu or cuda",
        ),
        ParamSpec::optional(
            "precision",
            ParamType::Choice(PRECISIONS),
            Value::Str("fp32".into()),
            "fp32, or bf16 weights and activations (tables are float32 either way)",
        ),
        ParamSpec::optional(
            "shard",
            ParamType::Str,
            Value::Str("0/1".into()),
            "i/n: this instance encodes the i-th of n contiguous row ranges; the n shards together \
             make the table",
        ),
    ]
}

fn text_params() -> Vec<ParamSpec> {
    let mut p = vec![
        ParamSpec::optional(
            "pooling",
            ParamType::Choice(TEXT_POOLINGS),
            Value::Str("pooler".into()),
            "pooler (the original's pooler_output), cls, masked mean, or tokens (last layer, \
             written to tokens.parquet)",
        ),
        ParamSpec::optional(
            "max_length",
            ParamType::Int,
            Value::Int(112),
            "tokens per text, [CLS] and [SEP] included; longer texts are truncated (the original: 112)",
        ),
        ParamSpec::optional(
            "text_column",
            ParamType::Str,
            Value::Str("caption".into()),
            "the records table's column holding the text",
        ),
    ];
    p.extend(common_params(64));
    p
}

fn image_params() -> Vec<ParamSpec> {
    let mut p = vec![
        ParamSpec::optional(
            "pooling",
            ParamType::Choice(IMAGE_POOLINGS),
            Value::Str("auto".into()),
            "auto (DINOv2: cls; ResNet-AE: mean, as the original), cls, mean of patch tokens or \
             latent positions, or tokens (written to tokens.parquet)",
        ),
        ParamSpec::optional(
            "normalize",
            ParamType::Choice(NORMALIZATIONS),
            Value::Str("imagenet".into()),
            "DINOv2 input normalisation: imagenet (what DINOv2 was trained with) or half (the \
             original's mean/std 0.5)",
        ),
        ParamSpec::optional(
            "resize",
            ParamType::Int,
            Value::Int(256),
            "the longer side is resized to this, then zero-padded to a square (MGCA's resize_img)",
        ),
        ParamSpec::optional(
            "image_size",
            ParamType::Int,
            Value::Int(224),
            "center crop (DINOv2) or final resize (ResNet-AE) to this many pixels",
        ),
    ];
    p.extend(common_params(64));
    p
}

fn text_inputs() -> Vec<InputSpec> {
    vec![
        InputSpec::one(
            "records",
            InputAccepts::Stage(&["ingest"]),
            "the records table (its text column)",
        ),
        InputSpec::one(
            "backbone",
            InputAccepts::Backbone,
            "a BERT-family folder (kind bert)",
        ),
    ]
}

fn image_inputs() -> Vec<InputSpec> {
    vec![
        InputSpec::one(
            "records",
            InputAccepts::Stage(&["ingest"]),
            "the records table (its `path` column)",
        ),
        InputSpec::one(
            "raw",
            InputAccepts::DatasetOrStage(&["synth"]),
            "the raw dataset folder the records' image paths are relative to",
        ),
        InputSpec::one(
            "backbone",
            InputAccepts::Backbone,
            "a DINOv2 (kind dinov2) or ResNet-AE (kind resnet-ae) folder",
        ),
    ]
}

/// Checks that integer parameter `name`, when set, lies in `range` (shared by the torch stages' declarations).
pub(crate) fn int_in(
    params: &Params,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<(), String> {
    match params.get(name).and_then(Value::as_i64) {
        Some(v) if !range.contains(&v) => Err(format!(
            "parameter `{name}` = {v} is outside {}..={}",
            range.start(),
            range.end()
        )),
        _ => Ok(()),
    }
}

fn validate_common(params: &Params) -> Result<(), String> {
    int_in(params, "batch_size", 1..=65536)?;
    if let Some(s) = params.get("shard").and_then(Value::as_str) {
        Shard::parse(s).map_err(|e| format!("parameter `shard`: {e}"))?;
    }
    Ok(())
}

fn validate_text(params: &Params) -> Result<(), String> {
    validate_common(params)?;
    int_in(params, "max_length", 2..=8192)?;
    match params.get("text_column").and_then(Value::as_str) {
        Some("") => Err("parameter `text_column` is empty".into()),
        _ => Ok(()),
    }
}

fn validate_image(params: &Params) -> Result<(), String> {
    validate_common(params)?;
    int_in(params, "resize", 1..=16384)?;
    int_in(params, "image_size", 1..=16384)
}

pub const TEXT: StageDecl = StageDecl {
    kind: ENCODE_TEXT,
    version: 1,
    about:
        "Encodes a records table's texts with a frozen BERT-family backbone into an embedding table",
    params: text_params,
    inputs: text_inputs,
    validate: validate_text,
};

pub const IMAGE: StageDecl = StageDecl {
    kind: ENCODE_IMAGE,
    version: 1,
    about: "Encodes a records table's images with a frozen DINOv2 or ResNet-AE backbone into an embedding table",
    params: image_params,
    inputs: image_inputs,
    validate: validate_image,
};

/// The stage kinds that run in the torch worker.
pub const TORCH_STAGES: &[StageDecl] = &[
    TEXT,
    IMAGE,
    crate::pretrain::DECL,
    crate::evaluate::CLASSIFY_DECL,
    crate::evaluate::SEGMENT_DECL,
    crate::evaluate::REPORT_DECL,
];

/// The torch stages that manifests may shard (`shards = N`): each shard encodes `shard = "i/N"`,
/// and the worker's merge (`torch_stages::merge`) concatenates the shard tables into the table an
/// unsharded run writes.
pub const SHARDED: &[&str] = &[ENCODE_TEXT, ENCODE_IMAGE];

/// Registers the torch stages; their runs start `worker` (the `adaptor-torch` binary), except
/// the work that needs no libtorch: `report` and the merge of encode shards run in this process
/// (`artifacts`).
pub fn register_torch(reg: &mut StageRegistry, worker: impl Into<PathBuf>) {
    let worker = worker.into();
    for decl in TORCH_STAGES {
        let mut stage = WorkerStage::new(*decl, worker.clone());
        if SHARDED.contains(&decl.kind) {
            stage = stage
                .with_sharding(pipeline::Sharding {
                    param: "shard",
                    merge: "concatenates the shard tables in row order into the unsharded table",
                })
                .merge_in_process(artifacts::merge::run_merge);
        }
        if decl.kind == crate::evaluate::REPORT {
            stage = stage.run_in_process(artifacts::report::run_stage);
        }
        reg.register(Arc::new(stage));
    }
}

/// `shard = "i/n"`: the i-th of n contiguous row ranges (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not of the form i/n (e.g. 0/4)"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{i}` is not a shard index"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{n}` is not a shard count"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: the index must be in 0..{count}"));
        }
        Ok(Shard { index, count })
    }

    /// This shard's rows of a table of `rows` rows: contiguous, in order, covering all rows
    /// exactly once over the n shards.
    pub fn range(&self, rows: usize) -> Range<usize> {
        let at = |i: u32| (rows as u128 * i as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_all_rows_once_in_order() {
        for rows in [0usize, 1, 7, 100] {
            for n in 1..=5u32 {
                let mut next = 0;
                for i in 0..n {
                    let r = Shard { index: i, count: n }.range(rows);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, rows);
            }
        }
    }

    #[test]
    fn shard_strings_are_checked() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        assert!(Shard::parse("4/4").unwrap_err().contains("0..4"));
        assert!(Shard::parse("1").is_err());
        assert!(Shard::parse("0/0").is_err());
    }

    #[test]
    fn declarations_validate_their_parameters() {
        let mut p = Params::new();
        p.insert("shard".into(), Value::Str("3/2".into()));
        assert!((TEXT.validate)(&p).unwrap_err().contains("shard"));
        let mut p = Params::new();
        p.insert("batch_size".into(), Value::Int(0));
        assert!((IMAGE.validate)(&p).unwrap_err().contains("batch_size"));
        let names: Vec<&str> = (IMAGE.params)().iter().map(|s| s.name).collect();
        assert!(names.contains(&"normalize") && names.contains(&"shard"));
    }
}
