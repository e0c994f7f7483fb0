//! `encode-image`: a records table's images through a frozen DINOv2 or ResNet-AE backbone into an
//! embedding table (`adaptor_torch::encode::encode_image` in the worker).

use pipeline::stage::ParamError;
use pipeline::{InputAccepts, InputSpec};

use super::params::int_in;
use super::preprocess::PREPROCESS;
use super::{BoundInputs, StageKind};
use crate::encode::{EncodeRun, ENCODE_IMAGE, SHARDING};

crate::choice! {
    /// `auto`: the original's output per backbone (DINOv2: `cls`; ResNet-AE: `mean`).
    pub enum ImagePooling { Auto = "auto", Cls = "cls", Mean = "mean", Tokens = "tokens" }
}

crate::choice! {
    /// DINOv2 input normalisation.
    pub enum Normalize { Imagenet = "imagenet", Half = "half" }
}

crate::choice! {
    /// Where DINOv2's crop window sits on the training rows' images.
    pub enum TrainCrop { Center = "center", Random = "random" }
}

crate::stage_params! {
    /// The parameters of `encode-image`.
    pub struct EncodeImageParams {
        pooling: ImagePooling = ImagePooling::Auto;
            "auto (DINOv2: cls; ResNet-AE: mean, as the original), cls, mean of patch tokens or \
             latent positions, or tokens (written to tokens.parquet)",
        normalize: Normalize = Normalize::Imagenet;
            "DINOv2 input normalisation: imagenet (what DINOv2 was trained with) or half (the \
             original's mean/std 0.5)",
        resize: i64 = 256, check int_in(1, 16384);
            "the longer side is resized to this, then zero-padded to a square (MGCA's resize_img)",
        image_size: i64 = 224, check int_in(1, 16384);
            "center crop (DINOv2) or final resize (ResNet-AE) to this many pixels",
    }
    late {
        train_crop: TrainCrop = TrainCrop::Center;
            "DINOv2 crop of `train` rows: center, or random (torchvision RandomCrop, as the \
             original embedded MIMIC-CXR's training images; one window per image from crop_seed \
             and its key). Other splits and ResNet-AE: center, as the original",
        crop_seed: i64 = 42, check int_in(0, i64::MAX); "seed of the random training crops",
    }
    with run: EncodeRun = EncodeRun::DEFAULT;
}

pub struct EncodeImage;

impl StageKind for EncodeImage {
    const KIND: &'static str = ENCODE_IMAGE;
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "Encodes a records table's images with a frozen DINOv2 or ResNet-AE backbone into an embedding table";
    const SHARDING: Option<pipeline::Sharding> = Some(SHARDING);
    type Params = EncodeImageParams;

    fn inputs() -> Vec<InputSpec> {
        vec![
            super::records_images_input(),
            super::raw_images_input().optional(),
            InputSpec::one(
                "images",
                InputAccepts::Stage(&[PREPROCESS]),
                "instead of `raw`: the same records' images decoded once by a `preprocess` stage \
                 (bit-identical embeddings when its size equals `resize`)",
            )
            .optional(),
            InputSpec::one(
                "backbone",
                InputAccepts::Backbone,
                "a DINOv2 (kind dinov2) or ResNet-AE (kind resnet-ae) folder",
            ),
        ]
    }

    /// Exactly one of `raw` (decode the files) and `images` (read a `preprocess` artifact), and
    /// never a preprocess artifact smaller than `resize` (that would upscale decoded pixels).
    fn check_inputs(p: &EncodeImageParams, inputs: &BoundInputs) -> Result<(), ParamError> {
        let images = inputs.get("images").into_iter().flatten().next();
        match (inputs.contains_key("raw"), images) {
            (true, Some(_)) => Err(ParamError::at(
                "images",
                "bind either `raw` (decode the files) or `images` (a preprocess artifact), not both",
            )),
            (false, None) => Err(ParamError::at(
                "raw",
                "missing input: bind `raw` (the raw dataset folder) or `images` (a preprocess \
                 stage over the same records)",
            )),
            (_, Some(a)) => {
                let size = a
                    .params
                    .get("size")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(256);
                if size < p.resize {
                    return Err(ParamError::at(
                        "images",
                        format!(
                            "`{}` stores {size} px images, smaller than this stage's resize = {}: \
                             give the preprocess stage size = {} (the largest resize of the \
                             stages that read it)",
                            a.name, p.resize, p.resize
                        ),
                    ));
                }
                Ok(())
            }
            (true, None) => Ok(()),
        }
    }
}

/// Joins the shard tables into the table an unsharded run writes, in this process (tables only).
pub fn merge(
    p: &EncodeImageParams,
    ctx: &pipeline::StageContext,
) -> Result<(), pipeline::StageError> {
    artifacts::merge::merge_tables(ENCODE_IMAGE, p.run.batch_size, ctx)
}
