//! The Adaptor (reference section A) and its training: the original module exactly, a
//! token-level fusion variant, the contrastive loss, and deterministic, resumable training with
//! metrics, a training curve and retrieval recall; and the downstream classification heads
//! trained on cached features, with sklearn-exact scores. Design notes: `docs/adaptor.md`,
//! `docs/heads.md`.
//!
//! Everything numeric runs in libtorch through tch; initialisation and shuffling use this crate's
//! own generator ([`rng`]), so results depend only on the seed (and, on a CPU, the thread count).

pub mod config;
pub mod data;
pub mod error;
pub mod finetune;
pub mod fusion;
pub mod heads;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod optim;
pub mod original;
pub mod params;
pub mod plot;
pub mod pretrain;
pub mod rng;
pub mod scores;

pub use config::{AdaptorConfig, FusionConfig, Precision, TrainConfig, Variant};
pub use data::{Batch, InMemoryPairs, PairSource};
pub use error::{Error, Result};
pub use finetune::{
    train_head, HeadConfig, HeadData, HeadEpoch, HeadObserver, HeadReport, HeadSchedule, HeadSplit,
};
pub use heads::{ClassificationHead, HeadKind};
pub use metrics::{EpochMetrics, Recall, StepMetrics};
pub use model::{Adaptor, CheckpointInfo, Forward};
pub use nn::Mode;
pub use original::ImageOnly;
pub use pretrain::{fit, fit_resumable, Observer, Silent, StopReason, TrainReport};
pub use rng::{label_subset, LabelStream};
