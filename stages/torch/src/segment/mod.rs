//! Segmentation (issue 6; reference D.2): the original's two decoders over frozen backbones — a
//! U-Net over the ResNet-AE encoder's maps with the (frozen) adaptor vector at the bottleneck, a
//! convolutional decoder over DINOv2 patch tokens passed through the adaptor — its loss and Dice
//! metric, data from the SIIM/RSNA records tables, and training. Design: `docs/segmentation.md`.

pub mod augment;
mod cache;
pub mod data;
pub mod decoders;
pub mod features;
pub mod layers;
pub mod loss;
pub mod metrics;
pub mod plot;
pub mod train;

pub use augment::ShiftScaleRotate;
pub use data::{SegData, SegDataset, SegSplit};
pub use decoders::{Decoder, DecoderModel, ResNetAeUNet, UNetShape, VitDecoder, VitShape};
pub use features::SegBackbone;
pub use loss::{DiceTerm, SegLoss};
pub use metrics::{dice_per_image, DiceSummary};
pub use train::{train_segmenter, SegConfig, SegEpoch, SegReport};
