//! Names the `train-adaptor` kind shares with its readers (the downstream stages, the report).
//! Its declaration is [`crate::kinds::train_adaptor`]; it runs in the `adaptor-torch` worker
//! (`adaptor_torch::pretrain`).

use crate::kinds::train_adaptor::{TrainAdaptor, Variant};
use crate::kinds::Declaration;

pub const TRAIN_ADAPTOR: &str = "train-adaptor";

/// What the stage writes beside `train`'s own files: which tables it trained on.
pub const PROVENANCE_FILE: &str = "provenance.json";

pub const VARIANTS: &[&str] = Variant::NAMES;

/// The width of the image embedding each variant's image path gives downstream stages: the
/// original's projection, and the fusion variant's model width (one vector per sequence: its
/// tokens pooled). `train::AdaptorConfig` holds the same numbers (checked in `adaptor-torch`).
pub const ORIGINAL_WIDTH: i64 = 768;
pub const FUSION_WIDTH: i64 = 512;

pub const DECL: Declaration = Declaration::of::<TrainAdaptor>();

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{Params, Value};

    fn with(name: &str, v: Value) -> Params {
        let mut p = DECL.defaults();
        p.insert(name.into(), v);
        p
    }

    #[test]
    fn parameters_are_checked() {
        let e = (DECL.validate)(&with("batch_size", Value::Int(1))).unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
        let e = (DECL.validate)(&with("lr", Value::Float(0.0))).unwrap_err();
        assert_eq!(e.to_string(), "parameter `lr`: must be in (0, 1], got 0");
        assert!((DECL.validate)(&with("warmup", Value::Float(0.5))).is_ok());
    }
}
