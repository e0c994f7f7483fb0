//! Declarations of the downstream stages (reference D): `classify` (a head over cached image
//! features, optionally through the frozen adaptor), `segment` (a decoder over a frozen backbone
//! and adaptor) and `report` (every result of the manifest into tables and plots). `classify` and
//! `segment` run in the `adaptor-torch` worker (`torch_stages::evaluate`); `report` needs no
//! libtorch and runs in the runner's process (`artifacts::report`, see `encode::register_torch`).

use pipeline::{InputAccepts, InputSpec, ParamSpec, ParamType, Params, Value};

use crate::encode::{int_in, DEVICES, ENCODE_IMAGE};
use crate::pretrain::TRAIN_ADAPTOR;
use crate::worker::StageDecl;

pub const CLASSIFY: &str = "classify";
pub const SEGMENT: &str = "segment";
pub const REPORT: &str = "report";

/// Written by `classify` and `segment`: `artifacts::report::EvalResult` as JSON.
pub const RESULT_FILE: &str = "result.json";

pub const HEADS: &[&str] = &["mlp", "linear"];
pub const DECODERS: &[&str] = &["auto", "unet", "vit"];
pub const ADAPTOR_INITS: &[&str] = &["pretrained", "random"];
pub const DICE_LOSSES: &[&str] = &["modified", "original"];

fn common(epochs: i64, batch: i64, lr: f64, wd: f64, patience: i64) -> Vec<ParamSpec> {
    vec![
        ParamSpec::optional(
            "fraction",
            ParamType::Float,
            Value::Float(1.0),
            "share of the training split used (1 %, 10 %, 100 % in the original): a subsample \
             drawn from `seed`, at least one example",
        ),
        ParamSpec::optional(
            "seed",
            ParamType::Int,
            Value::Int(0),
            "subsample, initialisation, shuffles and dropout",
        ),
        ParamSpec::optional(
            "adaptor_init",
            ParamType::Choice(ADAPTOR_INITS),
            Value::Str("pretrained".into()),
            "with an `adaptor` input: its pre-trained weights, or `random` (the same module \
             freshly initialised from `seed`: the random-init baseline)",
        ),
        ParamSpec::optional(
            "epochs",
            ParamType::Int,
            Value::Int(epochs),
            "maximum epochs",
        ),
        ParamSpec::optional(
            "batch_size",
            ParamType::Int,
            Value::Int(batch),
            "examples per training step",
        ),
        ParamSpec::optional(
            "lr",
            ParamType::Float,
            Value::Float(lr),
            "peak AdamW learning rate (warm-up, then cosine decay per step)",
        ),
        ParamSpec::optional(
            "weight_decay",
            ParamType::Float,
            Value::Float(wd),
            "AdamW weight decay (not on norms and biases)",
        ),
        ParamSpec::optional(
            "patience",
            ParamType::Int,
            Value::Int(patience),
            "stop after this many epochs without a better valid metric (0: never)",
        ),
        ParamSpec::optional(
            "device",
            ParamType::Choice(DEVICES),
            Value::Str("auto".into()),
            "auto (CUDA when libtorch sees a GPU), cpu or cuda",
        ),
    ]
}

fn classify_params() -> Vec<ParamSpec> {
    let mut p = vec![ParamSpec::optional(
        "head",
        ParamType::Choice(HEADS),
        Value::Str("mlp".into()),
        "mlp (the original SSLEvaluator: 394,753 parameters for 1 class over 768 inputs) or \
         linear (MGCA's linear probe)",
    )];
    p.extend(common(100, 128, 5e-4, 1e-4, 5));
    p
}

fn classify_inputs() -> Vec<InputSpec> {
    vec![
        InputSpec::one(
            "features",
            InputAccepts::Stage(&[ENCODE_IMAGE]),
            "the downstream dataset's image embedding table (pooled)",
        ),
        InputSpec::one(
            "records",
            InputAccepts::Stage(&["ingest"]),
            "the same dataset's records table: labels (`target` for RSNA, `label` for COVIDx)",
        ),
        InputSpec::one(
            "adaptor",
            InputAccepts::Stage(&[TRAIN_ADAPTOR]),
            "the pre-trained adaptor whose frozen image path maps the features (absent: the \
             no-adaptor ablation, backbone features straight into the head)",
        )
        .optional(),
    ]
}

fn segment_params() -> Vec<ParamSpec> {
    let mut p = vec![
        ParamSpec::optional(
            "decoder",
            ParamType::Choice(DECODERS),
            Value::Str("auto".into()),
            "auto (unet for a ResNet-AE backbone, vit for DINOv2), unet or vit",
        ),
        ParamSpec::optional(
            "crop",
            ParamType::Int,
            Value::Int(0),
            "input size in pixels; 0: the original's, 896 for SIIM and 224 for RSNA",
        ),
        ParamSpec::optional(
            "alpha",
            ParamType::Float,
            Value::Float(10.0),
            "loss = alpha · focal + Dice (the original's default 10)",
        ),
        ParamSpec::optional(
            "dice_loss",
            ParamType::Choice(DICE_LOSSES),
            Value::Str("modified".into()),
            "modified (per image, squared terms) or original (MGCA's −log over the batch); \
             both on probabilities",
        ),
    ];
    p.extend(common(50, 4, 5e-4, 1e-4, 10));
    p
}

fn segment_inputs() -> Vec<InputSpec> {
    vec![
        InputSpec::one(
            "records",
            InputAccepts::Stage(&["ingest"]),
            "a SIIM or RSNA records table (RLE masks or boxes)",
        ),
        InputSpec::one(
            "raw",
            InputAccepts::DatasetOrStage(&["synth"]),
            "the raw dataset folder the records' image paths are relative to",
        ),
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

fn report_inputs() -> Vec<InputSpec> {
    vec![
        InputSpec::many(
            "results",
            InputAccepts::Stage(&[CLASSIFY, SEGMENT]),
            "evaluation results (e.g. `classify[*]`, `segment[*]`)",
        ),
        InputSpec::many(
            "pretraining",
            InputAccepts::Stage(&[TRAIN_ADAPTOR]),
            "pre-training runs whose training curves the report shows",
        )
        .optional(),
    ]
}

fn check_common(params: &Params) -> Result<(), String> {
    int_in(params, "epochs", 1..=100_000)?;
    int_in(params, "batch_size", 1..=1 << 20)?;
    int_in(params, "patience", 0..=100_000)?;
    int_in(params, "seed", 0..=i64::MAX)?;
    if let Some(f) = params.get("fraction").and_then(Value::as_f64) {
        if !(f > 0.0 && f <= 1.0) {
            return Err(format!("parameter `fraction` = {f} must be in (0, 1]"));
        }
    }
    for name in ["lr", "weight_decay", "alpha"] {
        if let Some(v) = params.get(name).and_then(Value::as_f64) {
            if !v.is_finite() || v < 0.0 || (name == "lr" && v == 0.0) {
                return Err(format!(
                    "parameter `{name}` = {v} must be a finite number ≥ 0{}",
                    if name == "lr" { " (and not 0)" } else { "" }
                ));
            }
        }
    }
    Ok(())
}

fn check_segment(params: &Params) -> Result<(), String> {
    check_common(params)?;
    match params.get("crop").and_then(Value::as_i64) {
        Some(c) if c != 0 && (c < 32 || c % 32 != 0) => Err(format!(
            "parameter `crop` = {c}: the decoders need a multiple of 32 (224, 448, 896), or 0 \
             for the original's size per dataset"
        )),
        _ => Ok(()),
    }
}

fn no_params() -> Vec<ParamSpec> {
    Vec::new()
}

fn no_checks(_: &Params) -> Result<(), String> {
    Ok(())
}

pub const CLASSIFY_DECL: StageDecl = StageDecl {
    kind: CLASSIFY,
    version: 1,
    about: "Trains and tests a classification head (RSNA: AUROC; COVIDx: accuracy) on cached image features, through the frozen adaptor or without it",
    params: classify_params,
    inputs: classify_inputs,
    validate: check_common,
};

pub const SEGMENT_DECL: StageDecl = StageDecl {
    kind: SEGMENT,
    version: 1,
    about: "Trains and tests a segmentation decoder (SIIM, RSNA boxes) over a frozen backbone and adaptor: Dice, positive-only Dice, empty share",
    params: segment_params,
    inputs: segment_inputs,
    validate: check_segment,
};

pub const REPORT_DECL: StageDecl = StageDecl {
    kind: REPORT,
    version: 1,
    about: "Gathers every evaluation into results.parquet, results.md (the original's table shape, published numbers beside) and plots",
    params: no_params,
    inputs: report_inputs,
    validate: no_checks,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let mut p = Params::new();
        p.insert("fraction".into(), Value::Float(0.0));
        assert!((CLASSIFY_DECL.validate)(&p)
            .unwrap_err()
            .contains("fraction"));
        let mut p = Params::new();
        p.insert("crop".into(), Value::Int(100));
        assert!((SEGMENT_DECL.validate)(&p).unwrap_err().contains("crop"));
        let mut p = Params::new();
        p.insert("fraction".into(), Value::Float(0.01));
        assert!((CLASSIFY_DECL.validate)(&p).is_ok());
    }
}
