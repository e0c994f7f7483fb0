//! `segment`: a segmentation decoder (SIIM, RSNA boxes) trained and tested over a frozen backbone
//! and adaptor (`adaptor_torch::evaluate::segment` in the worker).

use pipeline::{InputAccepts, InputSpec};

use pipeline::stage::ParamError;

use super::encode_image::Normalize;
use super::params::non_negative;
use super::{BoundInputs, StageKind};
use crate::evaluate::{Training, SEGMENT};
use crate::pretrain::{FUSION_WIDTH, ORIGINAL_WIDTH, TRAIN_ADAPTOR};

crate::choice! {
    /// The decoder; `auto`: unet for a ResNet-AE backbone, vit for DINOv2.
    pub enum Decoder { Auto = "auto", Unet = "unet", Vit = "vit" }
}

crate::choice! {
    /// Training-image augmentation.
    pub enum Augment { None = "none", ShiftScaleRotate = "shift_scale_rotate" }
}

crate::choice! {
    /// The Dice term of the loss.
    pub enum DiceLoss { Modified = "modified", Original = "original" }
}

/// 0 (the original's size per dataset) or a multiple of 32 the decoders can take.
fn crop_size(c: &i64) -> Result<(), String> {
    if *c == 0 || (*c >= 32 && c % 32 == 0) {
        Ok(())
    } else {
        Err(format!(
            "the decoders need a multiple of 32 (224, 448, 896), or 0 for the original's size \
             per dataset, got {c}"
        ))
    }
}

crate::stage_params! {
    /// The parameters of `segment`.
    pub struct SegmentParams {
        decoder: Decoder = Decoder::Auto;
            "auto (unet for a ResNet-AE backbone, vit for DINOv2), unet or vit",
        crop: i64 = 0, check crop_size; "input size in pixels; 0: the original's, 896 for SIIM and 224 for RSNA",
        alpha: f64 = 10.0, check non_negative; "loss = alpha · focal + Dice (the original's default 10)",
        dice_loss: DiceLoss = DiceLoss::Modified;
            "modified (per image, squared terms) or original (MGCA's −log over the batch); \
             both on probabilities",
    }
    late {
        normalize: Normalize = Normalize::Imagenet;
            "DINOv2 input normalisation, as in encode-image: imagenet or half (the original's \
             mean/std 0.5)",
        augment: Augment = Augment::None;
            "training-image augmentation: none, or shift_scale_rotate (the original's SIIM \
             ShiftScaleRotate: scale ±10 %, rotation ±10°, p 0.5, image and mask together; \
             training features are then recomputed per batch)",
    }
    with training: Training = Training {
        epochs: 50,
        batch_size: 4,
        patience: 10,
        ..Training::BASE
    };
}

pub struct Segment;

impl StageKind for Segment {
    const KIND: &'static str = SEGMENT;
    // 2: the labelled count of a fraction rounds half to even (`train::rng::labelled_count`, the
    // heads' rule); version 1 rounded half away from zero, so an odd training split at a fraction
    // of 0.5 kept one image more.
    // 3: `result.json` records the setting (`EvalResult::setting`) the report compares with the
    // published one.
    const VERSION: u32 = 3;
    const ABOUT: &'static str = "Trains and tests a segmentation decoder (SIIM, RSNA boxes) over a frozen backbone and adaptor: Dice, positive-only Dice, empty share";
    type Params = SegmentParams;

    /// The decoders take the original variant's image path: one vector per patch token (ViT
    /// decoder) or per image (U-Net). A fusion adaptor pools a token sequence into one vector of
    /// another width, so it is refused here, at plan time, not after the upstream stages ran.
    fn check_inputs(_params: &SegmentParams, inputs: &BoundInputs) -> Result<(), ParamError> {
        let fusion = inputs.get("adaptor").into_iter().flatten().find(|a| {
            a.kind == TRAIN_ADAPTOR
                && a.params.get("variant").and_then(|v| v.as_str()) == Some("fusion")
        });
        match fusion {
            None => Ok(()),
            Some(a) => Err(ParamError::at(
                "adaptor",
                format!(
                    "`{}` trains the fusion variant, whose image path pools the tokens into one \
                     {FUSION_WIDTH}-d vector; the segmentation decoders take the original \
                     variant's {ORIGINAL_WIDTH}-d vector per patch token (ViT decoder) or per \
                     image (U-Net). Segment over an adaptor with variant = \"original\", or \
                     without one",
                    a.name
                ),
            )),
        }
    }

    fn inputs() -> Vec<InputSpec> {
        vec![
            InputSpec::one(
                "records",
                InputAccepts::Stage(&["ingest"]),
                "a SIIM or RSNA records table (RLE masks or boxes)",
            ),
            super::raw_images_input(),
            InputSpec::one(
                "backbone",
                InputAccepts::Backbone,
                "the frozen vision backbone (kind dinov2 or resnet-ae)",
            ),
            InputSpec::one(
                "adaptor",
                InputAccepts::Stage(&[TRAIN_ADAPTOR]),
                "the pre-trained adaptor (absent: the no-adaptor ablation)",
            )
            .optional(),
        ]
    }
}
