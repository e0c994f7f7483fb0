//! `synth`: a learnable synthetic miniature of a dataset in its exact raw layout, in process
//! ([`crate::synth::generate_with_size`]).

use pipeline::{InputSpec, StageContext, StageError};

use super::params::{int_in, ParamValue};
use super::StageKind;
use crate::synth::{self, SynthDataset};

impl ParamValue for SynthDataset {
    fn param_type() -> pipeline::ParamType {
        pipeline::ParamType::Choice(SynthDataset::NAMES)
    }
    fn to_value(&self) -> pipeline::Value {
        pipeline::Value::Str(self.name().to_string())
    }
    fn from_value(v: &pipeline::Value) -> Result<Self, String> {
        v.as_str()
            .and_then(SynthDataset::parse)
            .ok_or_else(|| format!("unknown dataset {v}"))
    }
}

crate::stage_params! {
    /// The parameters of `synth`.
    pub struct SynthParams {
        dataset: SynthDataset; "which dataset's layout to write",
        n: i64 = 200, check int_in(1, 1_000_000); "studies (mimic-cxr), patients (rsna) or images (covidx, siim)",
        seed: i64 = 0, check int_in(0, i64::MAX); "random seed; same seed, same bytes",
        image_size: i64 = synth::DEFAULT_IMAGE_SIZE as i64, check int_in(32, 4096);
            "image side in pixels (the real RSNA/SIIM images are 1024)",
    }
}

pub struct Synth;

impl StageKind for Synth {
    const KIND: &'static str = "synth";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "Writes a learnable synthetic miniature of a dataset in its exact raw layout";
    type Params = SynthParams;

    fn inputs() -> Vec<InputSpec> {
        Vec::new()
    }
}

pub fn run(p: &SynthParams, ctx: &StageContext) -> Result<(), StageError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(ctx.threads())
        .build()?;
    let (dataset, size) = (p.dataset, p.image_size as u32);
    let s = pool.install(|| {
        synth::generate_with_size(dataset, ctx.out_dir(), p.n as usize, p.seed as u64, size)
    })?;
    ctx.log(format!(
        "wrote {} images of {dataset} ({size} px): {:?}",
        s.images, s.labels
    ));
    Ok(())
}
