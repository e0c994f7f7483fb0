//! `retrieve`: image→report and report→image retrieval on MIMIC-CXR through the frozen adaptor:
//! recall@1/5/10 and median rank, a hit when the report belongs to the image's study, chance
//! levels beside them (`adaptor_torch::retrieve` in the worker).

use pipeline::{InputAccepts, InputSpec};

use super::params::int_in;
use super::{Device, StageKind};
use crate::encode::{ENCODE_IMAGE, ENCODE_TEXT};
use crate::evaluate::{AdaptorInit, RETRIEVE};
use crate::pretrain::TRAIN_ADAPTOR;

crate::choice! {
    /// Which MIMIC-CXR rows are searched.
    pub enum RetrieveSplit { Test = "test", Validate = "validate", Valid = "valid" }
}

crate::stage_params! {
    /// The parameters of `retrieve`.
    pub struct RetrieveParams {
        split: RetrieveSplit = RetrieveSplit::Test;
            "test: the official MIMIC-CXR test split (`official_split`); validate: the official \
             validate split; valid: the records' `valid` split (both, which `train-adaptor` \
             selects its checkpoint on)",
        adaptor_init: AdaptorInit = AdaptorInit::Pretrained;
            "with an `adaptor` input: its pre-trained weights, or `random` (the same module \
             freshly initialised from `seed`: the random-init baseline)",
        seed: i64 = 0, check int_in(0, i64::MAX); "the random-init adaptor's initialisation",
        device: Device = Device::Auto; "auto (CUDA when libtorch sees a GPU), cpu or cuda",
    }
}

pub struct Retrieve;

impl StageKind for Retrieve {
    const KIND: &'static str = RETRIEVE;
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "Image→report and report→image retrieval on MIMIC-CXR through the frozen adaptor: recall@1/5/10 and median rank beside chance; holds both pooled tables in memory (rows × D float32s, logged)";
    type Params = RetrieveParams;

    fn inputs() -> Vec<InputSpec> {
        vec![
            InputSpec::one(
                "image",
                InputAccepts::Stage(&[ENCODE_IMAGE]),
                "the MIMIC-CXR image embedding table (pooled)",
            )
            .streamed(),
            InputSpec::one(
                "text",
                InputAccepts::Stage(&[ENCODE_TEXT]),
                "the report embedding table over the same records (pooled)",
            )
            .streamed(),
            InputSpec::one(
                "records",
                InputAccepts::Stage(&["ingest"]),
                "the MIMIC-CXR records table (`study_id`, `official_split`)",
            ),
            InputSpec::one(
                "adaptor",
                InputAccepts::Stage(&[TRAIN_ADAPTOR]),
                "the pre-trained adaptor (original variant) whose image and text paths map both \
                 tables (absent: the raw backbone spaces, which must have the same width)",
            )
            .optional(),
        ]
    }
}
