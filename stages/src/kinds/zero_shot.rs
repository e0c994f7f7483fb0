//! `zero-shot`: classification without labels: per-class prompts through the frozen text backbone
//! and the adaptor's text path, images through its image path, softmax over the scaled cosine
//! similarities; `classify`'s metrics on the test split (`adaptor_torch::zeroshot` in the worker).

use pipeline::{InputAccepts, InputSpec};

use super::params::int_in;
use super::{Device, StageKind};
use crate::evaluate::{AdaptorInit, ZERO_SHOT};
use crate::pretrain::TRAIN_ADAPTOR;
use crate::prompts::{two_classes_or_none, Prompts};

crate::choice! {
    /// How a class's prompts become one class embedding.
    pub enum Aggregation { Mean = "mean" }
}

crate::choice! {
    /// How a prompt becomes one vector: the adaptor's training text table's pooling (`auto`), or
    /// a pooling checked against it.
    pub enum PromptPooling { Auto = "auto", Pooler = "pooler", Cls = "cls", Mean = "mean" }
}

crate::stage_params! {
    /// The parameters of `zero-shot`.
    pub struct ZeroShotParams {
        prompts: Prompts = Prompts::default(), check two_classes_or_none;
            "class → prompts, e.g. { pneumonia = [\"…\"], normal = [\"…\"] }; empty: the \
             committed defaults of the records' dataset (data/prompts/DATASET.toml)",
        aggregation: Aggregation = Aggregation::Mean;
            "mean: the mean of a class's L2-normalised prompt embeddings, normalised again (CLIP)",
        pooling: PromptPooling = PromptPooling::Auto;
            "auto: the pooling of the text table the adaptor was pre-trained on (from its \
             provenance; pooler without an adaptor); an explicit one must equal it",
        max_length: i64 = 112, check int_in(2, 8192);
            "tokens per prompt, [CLS] and [SEP] included (as encode-text's max_length)",
        adaptor_init: AdaptorInit = AdaptorInit::Pretrained;
            "with an `adaptor` input: its pre-trained weights, or `random` (the same module \
             freshly initialised from `seed`, its initial logit scale: the random-init baseline)",
        seed: i64 = 0, check int_in(0, i64::MAX); "the random-init adaptor's initialisation",
        device: Device = Device::Auto; "auto (CUDA when libtorch sees a GPU), cpu or cuda",
    }
}

pub struct ZeroShot;

impl StageKind for ZeroShot {
    const KIND: &'static str = ZERO_SHOT;
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "Classifies without labels (RSNA: AUROC; COVIDx: accuracy): per-class prompts and images through the frozen adaptor, softmax over scaled cosine similarities; holds the pooled image features in memory (rows × D float32s, logged)";
    type Params = ZeroShotParams;

    fn inputs() -> Vec<InputSpec> {
        let [features, records] = super::classify::features_and_records();
        vec![
            features,
            records,
            InputSpec::one(
                "backbone",
                InputAccepts::Backbone,
                "the frozen text backbone (kind bert) the adaptor was pre-trained with",
            ),
            InputSpec::one(
                "adaptor",
                InputAccepts::Stage(&[TRAIN_ADAPTOR]),
                "the pre-trained adaptor (original variant) whose text and image paths map prompts \
                 and images (absent: the raw backbone spaces, which must have the same width)",
            )
            .optional(),
        ]
    }
}
