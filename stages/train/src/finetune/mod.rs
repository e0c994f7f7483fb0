//! Fine-tuning on frozen features: the classification heads of reference D.1 ([`train_head`],
//! trained on cached feature tables) and, in adaptor-torch, the segmentation decoders of D.2;
//! both select their epoch and stop early through one [`Selection`] and share [`cosine`].
//!
//! Determinism: initialisation, the label subset and the per-epoch shuffles come from
//! [`crate::rng`]; dropout uses libtorch's generator re-seeded from `(seed, epoch)` at every epoch
//! start, under the same process-wide lock as [`crate::pretrain`]. On a CPU, the same seed and
//! thread count give byte-identical `head.safetensors`, `metrics_epochs.parquet` and
//! `predictions.parquet`.

mod config;
mod head;
mod outputs;
mod select;

pub use config::{HeadConfig, HeadSchedule};
pub use head::{train_head, HeadData, HeadEpoch, HeadObserver, HeadReport, HeadSplit};
pub use select::{cosine, Selection};

pub const HEAD_CHECKPOINT: &str = "head.safetensors";
pub const HEAD_EPOCH_METRICS: &str = "metrics_epochs.parquet";
pub const PREDICTIONS: &str = "predictions.parquet";
pub const HEAD_CURVE: &str = "curve.png";
pub const HEAD_REPORT: &str = "report.json";

#[cfg(test)]
mod tests {
    use crate::rng::{label_subset as subset, LabelStream};

    fn label_subset(n: usize, f: f64, seed: u64) -> Vec<usize> {
        subset(n, f, seed, LabelStream::Classify)
    }

    #[test]
    fn label_subset_is_deterministic_and_sized() {
        assert_eq!(label_subset(10, 1.0, 3), (0..10).collect::<Vec<_>>());
        let a = label_subset(1000, 0.1, 3);
        assert_eq!(a.len(), 100);
        assert_eq!(a, label_subset(1000, 0.1, 3));
        assert_ne!(a, label_subset(1000, 0.1, 4));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(label_subset(30, 0.01, 0).len(), 1); // max(1, round(0.3))
        assert_eq!(label_subset(250, 0.01, 0).len(), 2); // round(2.5) = 2, half to even
        assert_eq!(label_subset(350, 0.01, 0).len(), 4); // round(3.5) = 4
    }
}
