//! `train-adaptor`: the Adaptor (reference section A) trained contrastively on a pair of
//! key-aligned embedding tables, writing its checkpoint, metrics and curve
//! (`adaptor_torch::pretrain::run` in the worker, over `train::fit_resumable`).

use pipeline::{InputAccepts, InputSpec};

use super::params::{float_in, int_in, positive_up_to};
use super::{Device, Precision, StageKind};
use crate::encode::{ENCODE_IMAGE, ENCODE_TEXT};
use crate::pretrain::TRAIN_ADAPTOR;

crate::choice! {
    /// Which Adaptor module.
    pub enum Variant { Original = "original", Fusion = "fusion" }
}

crate::stage_params! {
    /// The parameters of `train-adaptor`.
    pub struct TrainAdaptorParams {
        variant: Variant = Variant::Original;
            "original (the published module, exactly) or fusion (cross-attention over token \
             sequences; needs token tables from both encoders)",
        epochs: i64 = 50, check int_in(1, 100_000); "maximum epochs (the original: 50)",
        batch_size: i64 = 1024, check int_in(2, 1 << 20);
            "pairs per step; every other pair of the batch is a negative (the original: 1024)",
        lr: f64 = 2e-5, check positive_up_to(1.0); "peak AdamW learning rate (the original: 2e-5)",
        weight_decay: f64 = 0.01, check float_in(0.0, 10.0);
            "AdamW weight decay (not applied to norms, biases and the logit scale unless \
             original_defects)",
        warmup: f64 = 0.02, check float_in(0.0, 1.0);
            "fraction of all steps spent warming the learning rate up linearly, then linear decay",
        patience: i64 = 10, check int_in(0, 100_000);
            "stop after this many epochs without a lower validation loss (0: never stop early)",
        seed: i64 = 42, check int_in(0, i64::MAX); "initialisation, shuffles and dropout",
        device: Device = Device::Auto; "auto (CUDA when libtorch sees a GPU), cpu or cuda",
        precision: Precision = Precision::Fp32; "fp32, or bf16 matrix products (GPU)",
        original_defects: bool = false;
            "reproduce the original's training defects: weight decay on every parameter, the \
             scheduler stepped per step and per epoch, one numpy seed-42 order for every epoch \
             (reference G.8-G.10)",
    }
}

pub struct TrainAdaptor;

impl StageKind for TrainAdaptor {
    const KIND: &'static str = TRAIN_ADAPTOR;
    // 2: `original_defects` orders the rows as the original does (numpy's `seed(42)` shuffle,
    // `train::rng::original_order`); version 1 kept them in table order.
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "Trains the Adaptor contrastively on an image and a text embedding table of the same records";
    type Params = TrainAdaptorParams;

    fn inputs() -> Vec<InputSpec> {
        vec![
            InputSpec::one(
                "image",
                InputAccepts::Stage(&[ENCODE_IMAGE]),
                "the image embedding table (pooled for `original`, tokens for `fusion`)",
            )
            .streamed(),
            InputSpec::one(
                "text",
                InputAccepts::Stage(&[ENCODE_TEXT]),
                "the text embedding table over the same records, in the same key order",
            )
            .streamed(),
        ]
    }
}
