//! Declaration of the `train-adaptor` stage: the Adaptor (reference section A) trained
//! contrastively on a pair of key-aligned embedding tables (an `encode-image` and an
//! `encode-text` output over the same records), writing its checkpoint, metrics and curve.
//!
//! The work runs in the `adaptor-torch` worker (`torch_stages::pretrain`), which calls
//! `adaptor_train::train_resumable`; this file holds what the runner needs without libtorch.

use pipeline::{InputAccepts, InputSpec, ParamSpec, ParamType, Params, Value};

use crate::encode::{int_in, DEVICES, ENCODE_IMAGE, ENCODE_TEXT, PRECISIONS};
use crate::worker::StageDecl;

pub const TRAIN_ADAPTOR: &str = "train-adaptor";

/// What the stage writes beside `adaptor_train`'s own files: which tables it trained on.
pub const PROVENANCE_FILE: &str = "provenance.json";

pub const VARIANTS: &[&str] = &["original", "fusion"];

fn params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::optional(
            "variant",
            ParamType::Choice(VARIANTS),
            Value::Str("original".into()),
            "original (the published module, exactly) or fusion (cross-attention over token \
             sequences; needs token tables from both encoders)",
        ),
        ParamSpec::optional(
            "epochs",
            ParamType::Int,
            Value::Int(50),
            "maximum epochs (the original: 50)",
        ),
        ParamSpec::optional(
            "batch_size",
            ParamType::Int,
            Value::Int(1024),
            "pairs per step; every other pair of the batch is a negative (the original: 1024)",
        ),
        ParamSpec::optional(
            "lr",
            ParamType::Float,
            Value::Float(2e-5),
            "peak AdamW learning rate (the original: 2e-5)",
        ),
        ParamSpec::optional(
            "weight_decay",
            ParamType::Float,
            Value::Float(0.01),
            "AdamW weight decay (not applied to norms, biases and the logit scale unless \
             original_defects)",
        ),
        ParamSpec::optional(
            "warmup",
            ParamType::Float,
            Value::Float(0.02),
            "fraction of all steps spent warming the learning rate up linearly, then linear decay",
        ),
        ParamSpec::optional(
            "patience",
            ParamType::Int,
            Value::Int(10),
            "stop after this many epochs without a lower validation loss (0: never stop early)",
        ),
        ParamSpec::optional(
            "seed",
            ParamType::Int,
            Value::Int(42),
            "initialisation, shuffles and dropout",
        ),
        ParamSpec::optional(
            "device",
            ParamType::Choice(DEVICES),
            Value::Str("auto".into()),
            "auto (CUDA when libtorch sees a GPU), cpu or cuda",
        ),
        ParamSpec::optional(
            "precision",
            ParamType::Choice(PRECISIONS),
            Value::Str("fp32".into()),
            "fp32, or bf16 matrix products (GPU)",
        ),
        ParamSpec::optional(
            "original_defects",
            ParamType::Bool,
            Value::Bool(false),
            "reproduce the original's training defects: weight decay on every parameter, the \
             scheduler stepped per step and per epoch, no shuffling (reference G.8-G.10)",
        ),
    ]
}

fn inputs() -> Vec<InputSpec> {
    vec![
        InputSpec::one(
            "image",
            InputAccepts::Stage(&[ENCODE_IMAGE]),
            "the image embedding table (pooled for `original`, tokens for `fusion`)",
        ),
        InputSpec::one(
            "text",
            InputAccepts::Stage(&[ENCODE_TEXT]),
            "the text embedding table over the same records, in the same key order",
        ),
    ]
}

fn validate(params: &Params) -> Result<(), String> {
    int_in(params, "epochs", 1..=100_000)?;
    int_in(params, "batch_size", 2..=1 << 20)?;
    int_in(params, "patience", 0..=100_000)?;
    int_in(params, "seed", 0..=i64::MAX)?;
    for (name, lo, hi) in [
        ("lr", 0.0, 1.0),
        ("weight_decay", 0.0, 10.0),
        ("warmup", 0.0, 1.0),
    ] {
        if let Some(v) = params.get(name).and_then(Value::as_f64) {
            if !(v.is_finite() && v >= lo && v <= hi) || (name == "lr" && v == 0.0) {
                return Err(format!(
                    "parameter `{name}` = {v} is outside {lo}..={hi}{}",
                    if name == "lr" { " (and not 0)" } else { "" }
                ));
            }
        }
    }
    Ok(())
}

pub const DECL: StageDecl = StageDecl {
    kind: TRAIN_ADAPTOR,
    version: 1,
    about: "Trains the Adaptor contrastively on an image and a text embedding table of the same records",
    params,
    inputs,
    validate,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let mut p = Params::new();
        p.insert("batch_size".into(), Value::Int(1));
        assert!((DECL.validate)(&p).unwrap_err().contains("batch_size"));
        let mut p = Params::new();
        p.insert("lr".into(), Value::Float(0.0));
        assert!((DECL.validate)(&p).unwrap_err().contains("`lr`"));
        let mut p = Params::new();
        p.insert("warmup".into(), Value::Float(0.5));
        assert!((DECL.validate)(&p).is_ok());
    }
}
