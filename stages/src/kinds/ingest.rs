//! `ingest`: a raw dataset (MIMIC-CXR, RSNA, COVIDx, SIIM) into a records table, in process
//! ([`crate::ingest::ingest_with_progress`]).

use pipeline::{InputAccepts, InputSpec, StageContext, StageError};

use super::params::ParamValue;
use super::StageKind;
use crate::ingest::{self, IngestOptions, Verify};
use crate::split::seed_u32;

impl ParamValue for Verify {
    fn param_type() -> pipeline::ParamType {
        pipeline::ParamType::Choice(Verify::NAMES)
    }
    fn to_value(&self) -> pipeline::Value {
        let name = match self {
            Verify::Decode => "decode",
            Verify::Exists => "exists",
        };
        pipeline::Value::Str(name.to_string())
    }
    fn from_value(v: &pipeline::Value) -> Result<Self, String> {
        v.as_str()
            .and_then(Verify::parse)
            .ok_or_else(|| format!("expected decode or exists, found {v}"))
    }
}

/// A seed numpy takes (`0..=2^32-1`).
fn numpy_seed(seed: &i64) -> Result<(), String> {
    seed_u32(*seed).map(drop)
}

crate::stage_params! {
    /// The parameters of `ingest`.
    pub struct IngestParams {
        split_seed: i64 = 0, check numpy_seed; "seed of the random splits; 0 reproduces the original's random_state=0",
        skip_bad: bool = false; "write bad rows to skipped.parquet instead of failing",
        verify: Verify = Verify::Decode;
            "decode: every image must decode; exists: only check the files exist",
        balance_seed: i64 = 42, check numpy_seed; "SIIM: seed of the balanced training subset (balanced_train column)",
    }
}

pub struct Ingest;

impl StageKind for Ingest {
    const KIND: &'static str = "ingest";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "Reads a raw dataset (MIMIC-CXR, RSNA, COVIDx, SIIM) into a records table";
    type Params = IngestParams;

    fn inputs() -> Vec<InputSpec> {
        vec![InputSpec::one(
            "raw",
            InputAccepts::DatasetOrStage(&["synth"]),
            "the raw dataset folder",
        )]
    }
}

pub fn run(p: &IngestParams, ctx: &StageContext) -> Result<(), StageError> {
    let raw = ctx.input("raw")?;
    let kind = ingest::resolve_kind(raw.kind(), &raw.path)?;
    let opts = IngestOptions {
        split_seed: seed_u32(p.split_seed)?,
        skip_bad: p.skip_bad,
        verify: p.verify,
        balance_seed: seed_u32(p.balance_seed)?,
        threads: ctx.threads(),
    };
    let log = |l: &str| ctx.log(l);
    let progress = |done: u64, total: u64| ctx.progress(done, total, "images");
    ingest::ingest_with_progress(kind, &raw.path, ctx.out_dir(), &opts, &log, &progress)?;
    Ok(())
}
