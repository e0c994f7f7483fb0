//! What the downstream kinds (reference D: `classify`, `segment`, `report`) share: their names,
//! the result file, and the training settings of a head or decoder ([`Training`]). Each kind's
//! declaration is in [`crate::kinds`]; they run in the `adaptor-torch` worker
//! (`adaptor_torch::evaluate`); `report` runs in the runner's process (`artifacts::report`).

use crate::kinds::classify::{Classify, Head};
use crate::kinds::params::{int_in, non_negative, positive_up_to};
use crate::kinds::report::Report;
use crate::kinds::segment::{Decoder, DiceLoss, Segment};
use crate::kinds::{Declaration, Device};

pub const CLASSIFY: &str = "classify";
pub const SEGMENT: &str = "segment";
pub const REPORT: &str = "report";
pub const ZERO_SHOT: &str = "zero-shot";
pub const RETRIEVE: &str = "retrieve";

/// Written by `classify`, `segment` and `zero-shot`: `artifacts::report::EvalResult` as JSON;
/// by `retrieve`: `artifacts::report::RetrievalResult`.
pub const RESULT_FILE: &str = "result.json";

pub const HEADS: &[&str] = Head::NAMES;
pub const DECODERS: &[&str] = Decoder::NAMES;
pub const ADAPTOR_INITS: &[&str] = AdaptorInit::NAMES;
pub const DICE_LOSSES: &[&str] = DiceLoss::NAMES;

crate::choice! {
    /// The adaptor a downstream stage puts between the features and its head or decoder.
    pub enum AdaptorInit { Pretrained = "pretrained", Random = "random" }
}

/// A finite number > 0 (a learning rate).
fn positive(v: &f64) -> Result<(), String> {
    if v.is_finite() && *v > 0.0 {
        Ok(())
    } else {
        Err(format!("must be a finite number > 0, got {v}"))
    }
}

crate::param_group! {
    /// How a head (`classify`) or a decoder (`segment`) is trained; each kind has its defaults.
    pub struct Training {
        fraction: f64, check positive_up_to(1.0);
            "share of the training split used (1 %, 10 %, 100 % in the original): a subsample \
             drawn from `seed`, at least one example",
        seed: i64, check int_in(0, i64::MAX); "subsample, initialisation, shuffles and dropout",
        adaptor_init: AdaptorInit;
            "with an `adaptor` input: its pre-trained weights, or `random` (the same module \
             freshly initialised from `seed`: the random-init baseline)",
        epochs: i64, check int_in(1, 100_000); "maximum epochs",
        batch_size: i64, check int_in(1, 1 << 20); "examples per training step",
        lr: f64, check positive; "peak AdamW learning rate (warm-up, then cosine decay per step)",
        weight_decay: f64, check non_negative; "AdamW weight decay (not on norms and biases)",
        patience: i64, check int_in(0, 100_000);
            "stop after this many epochs without a better valid metric (0: never)",
        device: Device; "auto (CUDA when libtorch sees a GPU), cpu or cuda",
    }
}

impl Training {
    /// The settings both kinds share by default; each kind sets its epochs, batch, lr, decay
    /// and patience.
    pub const BASE: Training = Training {
        fraction: 1.0,
        seed: 0,
        adaptor_init: AdaptorInit::Pretrained,
        epochs: 100,
        batch_size: 128,
        lr: 5e-4,
        weight_decay: 1e-4,
        patience: 5,
        device: Device::Auto,
    };

    /// `patience` as the training loops take it: `None` never stops early.
    pub fn early_stop(&self) -> Option<usize> {
        (self.patience > 0).then_some(self.patience as usize)
    }
}

pub const CLASSIFY_DECL: Declaration = Declaration::of::<Classify>();
pub const SEGMENT_DECL: Declaration = Declaration::of::<Segment>();
pub const REPORT_DECL: Declaration = Declaration::of::<Report>();

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{Params, Value};

    fn with(decl: &Declaration, name: &str, v: Value) -> Params {
        let mut p = decl.defaults();
        p.insert(name.into(), v);
        p
    }

    #[test]
    fn parameters_are_checked() {
        let e = (CLASSIFY_DECL.validate)(&with(&CLASSIFY_DECL, "fraction", Value::Float(1.5)))
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("fraction"));
        assert_eq!(e.message, "must be in (0, 1], got 1.5");
        let e = (SEGMENT_DECL.validate)(&with(&SEGMENT_DECL, "crop", Value::Int(100))).unwrap_err();
        assert!(e.to_string().contains("crop"), "{e}");
        let ok = with(&CLASSIFY_DECL, "fraction", Value::Float(0.01));
        assert!((CLASSIFY_DECL.validate)(&ok).is_ok());
    }
}
