//! `classify`: a classification head (RSNA: AUROC; COVIDx: accuracy) trained and tested on
//! cached image features, through the frozen adaptor or without it
//! (`adaptor_torch::evaluate::classify` in the worker).

use pipeline::{InputAccepts, InputSpec};

use super::StageKind;
use crate::encode::ENCODE_IMAGE;
use crate::evaluate::{Training, CLASSIFY};
use crate::pretrain::TRAIN_ADAPTOR;

crate::choice! {
    /// The classification head.
    pub enum Head { Mlp = "mlp", Linear = "linear" }
}

crate::stage_params! {
    /// The parameters of `classify`.
    pub struct ClassifyParams {
        head: Head = Head::Mlp;
            "mlp (the original SSLEvaluator: 394,753 parameters for 1 class over 768 inputs) or \
             linear (MGCA's linear probe)",
    }
    with training: Training = Training::BASE;
}

pub struct Classify;

impl StageKind for Classify {
    const KIND: &'static str = CLASSIFY;
    // 2: `result.json` records the setting (`EvalResult::setting`) the report compares with the
    // published one.
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "Trains and tests a classification head (RSNA: AUROC; COVIDx: accuracy) on cached image features, through the frozen adaptor or without it; holds the pooled features in memory (rows × D float32s, logged)";
    type Params = ClassifyParams;

    fn inputs() -> Vec<InputSpec> {
        let [features, records] = features_and_records();
        vec![
            features,
            records,
            InputSpec::one(
                "adaptor",
                InputAccepts::Stage(&[TRAIN_ADAPTOR]),
                "the pre-trained adaptor whose frozen image path maps the features (absent: the \
                 no-adaptor ablation, backbone features straight into the head)",
            )
            .optional(),
        ]
    }
}

/// The `features` and `records` inputs of the kinds that score a downstream dataset
/// (`classify`, `zero-shot`).
pub(crate) fn features_and_records() -> [InputSpec; 2] {
    [
        InputSpec::one(
            "features",
            InputAccepts::Stage(&[ENCODE_IMAGE]),
            "the downstream dataset's image embedding table (pooled)",
        )
        .streamed(),
        InputSpec::one(
            "records",
            InputAccepts::Stage(&["ingest"]),
            "the same dataset's records table: labels (`target` for RSNA, `label` for COVIDx)",
        ),
    ]
}
