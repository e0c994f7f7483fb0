//! `preprocess`: decode once. A records table's images decoded and resized once into 8-bit shards
//! that the `encode-image` stages of every backbone read (their input `images`) instead of the raw
//! files, in process ([`crate::preprocess::preprocess`]).

use pipeline::{InputSpec, StageContext, StageError};

use super::params::int_in;
use super::StageKind;
use crate::preprocess::{self, PreprocessOptions, Progress};

pub const PREPROCESS: &str = "preprocess";

crate::stage_params! {
    /// The parameters of `preprocess`.
    pub struct PreprocessParams {
        size: i64 = 256, check int_in(1, 16384);
            "the longer side is resized to this, then zero-padded to a square (MGCA's resize_img): \
             the largest `resize` of the encode-image stages that read it; one with the same \
             resize gets exactly the embeddings of decoding the files itself",
    }
}

pub struct Preprocess;

impl StageKind for Preprocess {
    const KIND: &'static str = PREPROCESS;
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "Decodes a records table's images once into 8-bit square shards that encode-image reads instead of the raw files";
    type Params = PreprocessParams;

    fn inputs() -> Vec<InputSpec> {
        vec![super::records_images_input(), super::raw_images_input()]
    }
}

impl Progress for StageContext {
    fn log(&self, line: &str) {
        StageContext::log(self, line)
    }

    fn progress(&self, done: u64, total: u64) {
        StageContext::progress(self, done, total, "images")
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }
}

pub fn run(p: &PreprocessParams, ctx: &StageContext) -> Result<(), StageError> {
    let records = ctx.input("records")?.path.join(crate::ingest::RECORDS);
    let raw = &ctx.input("raw")?.path;
    let opts = PreprocessOptions {
        size: p.size as u32,
        threads: ctx.threads(),
    };
    preprocess::preprocess(&records, raw, ctx.out_dir(), &opts, ctx)?;
    Ok(())
}
