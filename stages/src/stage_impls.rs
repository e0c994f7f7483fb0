//! The `synth` and `ingest` stage kinds: thin adapters from a [`StageContext`] to
//! [`crate::synth::generate_with_size`] and [`crate::ingest::ingest_with_progress`].

use pipeline::{
    InputAccepts, InputSpec, ParamSpec, ParamType, Params, Stage, StageContext, StageError, Value,
};

use crate::ingest::{self, IngestOptions, Verify};
use crate::split::seed_u32;
use crate::synth::{self, SynthDataset};

pub struct SynthStage;

impl Stage for SynthStage {
    fn kind(&self) -> &'static str {
        "synth"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "Writes a learnable synthetic miniature of a dataset in its exact raw layout"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required(
                "dataset",
                ParamType::Choice(SynthDataset::NAMES),
                "which dataset's layout to write",
            ),
            ParamSpec::optional(
                "n",
                ParamType::Int,
                Value::Int(200),
                "studies (mimic-cxr), patients (rsna) or images (covidx, siim)",
            ),
            ParamSpec::optional(
                "seed",
                ParamType::Int,
                Value::Int(0),
                "random seed; same seed, same bytes",
            ),
            ParamSpec::optional(
                "image_size",
                ParamType::Int,
                Value::Int(synth::DEFAULT_IMAGE_SIZE as i64),
                "image side in pixels (the real RSNA/SIIM images are 1024)",
            ),
        ]
    }

    fn inputs(&self) -> Vec<InputSpec> {
        Vec::new()
    }

    fn validate(&self, params: &Params) -> Result<(), String> {
        if let Some(n) = params.get("n").and_then(Value::as_i64) {
            if !(1..=1_000_000).contains(&n) {
                return Err(format!("parameter `n` = {n} is outside 1..=1000000"));
            }
        }
        if let Some(s) = params.get("seed").and_then(Value::as_i64) {
            if s < 0 {
                return Err(format!("parameter `seed` = {s} must not be negative"));
            }
        }
        if let Some(s) = params.get("image_size").and_then(Value::as_i64) {
            if !(32..=4096).contains(&s) {
                return Err(format!("parameter `image_size` = {s} is outside 32..=4096"));
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let name = ctx.str_param("dataset")?;
        let dataset =
            SynthDataset::parse(name).ok_or_else(|| format!("unknown dataset `{name}`"))?;
        let n = ctx.i64_param("n")? as usize;
        let seed = ctx.i64_param("seed")? as u64;
        let size = ctx.i64_param("image_size")? as u32;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(ctx.threads())
            .build()?;
        let s =
            pool.install(|| synth::generate_with_size(dataset, ctx.out_dir(), n, seed, size))?;
        ctx.log(format!(
            "wrote {} images of {dataset} ({size} px): {:?}",
            s.images, s.labels
        ));
        Ok(())
    }
}

pub struct IngestStage;

impl Stage for IngestStage {
    fn kind(&self) -> &'static str {
        "ingest"
    }

    fn version(&self) -> u32 {
        1
    }

    fn about(&self) -> &'static str {
        "Reads a raw dataset (MIMIC-CXR, RSNA, COVIDx, SIIM) into a records table"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional(
                "split_seed",
                ParamType::Int,
                Value::Int(0),
                "seed of the random splits; 0 reproduces the original's random_state=0",
            ),
            ParamSpec::optional(
                "skip_bad",
                ParamType::Bool,
                Value::Bool(false),
                "write bad rows to skipped.parquet instead of failing",
            ),
            ParamSpec::optional(
                "verify",
                ParamType::Choice(Verify::NAMES),
                Value::Str("decode".into()),
                "decode: every image must decode; exists: only check the files exist",
            ),
            ParamSpec::optional(
                "balance_seed",
                ParamType::Int,
                Value::Int(42),
                "SIIM: seed of the balanced training subset (balanced_train column)",
            ),
        ]
    }

    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::one(
            "raw",
            InputAccepts::DatasetOrStage(&["synth"]),
            "the raw dataset folder",
        )]
    }

    fn validate(&self, params: &Params) -> Result<(), String> {
        for name in ["split_seed", "balance_seed"] {
            if let Some(s) = params.get(name).and_then(Value::as_i64) {
                seed_u32(s).map_err(|e| format!("parameter `{name}`: {e}"))?;
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let raw = ctx.input("raw")?;
        let kind = ingest::resolve_kind(raw.kind(), &raw.path)?;
        let opts = IngestOptions {
            split_seed: seed_u32(ctx.i64_param("split_seed")?)?,
            skip_bad: ctx.bool_param("skip_bad")?,
            verify: Verify::parse(ctx.str_param("verify")?)
                .ok_or("parameter `verify` is not decode or exists")?,
            balance_seed: seed_u32(ctx.i64_param("balance_seed")?)?,
            threads: ctx.threads(),
        };
        let log = |l: &str| ctx.log(l);
        let progress = |done: u64, total: u64| ctx.progress(done, total, "images");
        ingest::ingest_with_progress(kind, &raw.path, ctx.out_dir(), &opts, &log, &progress)?;
        Ok(())
    }
}
