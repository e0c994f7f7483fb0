//! The worker's half of the stage registry: how each kind that needs libtorch runs, one line per
//! kind, keyed by its declaration in `stages::kinds` (where the runner's half lists the same kinds
//! as `Entry::Worker`). `run-stage` finds a job's kind here and runs it with the parameters read
//! into the kind's struct. Merges of shards never come here: they are tables only, and the runner
//! does them in its own process.

use pipeline::{StageContext, StageError};
use stages::kinds::{
    classify::Classify, encode_image::EncodeImage, encode_text::EncodeText, retrieve::Retrieve,
    segment::Segment, train_adaptor::TrainAdaptor, zero_shot::ZeroShot,
};
use stages::Implementation;

use crate::{encode, evaluate, pretrain, retrieve, zeroshot};

/// Every kind this worker runs.
pub fn implementations() -> Vec<Implementation> {
    vec![
        Implementation::of::<EncodeText>(encode::encode_text),
        Implementation::of::<EncodeImage>(encode::encode_image),
        Implementation::of::<TrainAdaptor>(pretrain::run),
        Implementation::of::<Classify>(evaluate::classify),
        Implementation::of::<Segment>(evaluate::segment),
        Implementation::of::<ZeroShot>(zeroshot::run),
        Implementation::of::<Retrieve>(retrieve::run),
    ]
}

/// The implementation of `kind`.
pub fn find(kind: &str) -> Result<Implementation, StageError> {
    let all = implementations();
    match all.iter().position(|i| i.kind() == kind) {
        Some(at) => Ok(all[at].clone()),
        None => Err(format!(
            "the torch worker does not know stage kind `{kind}` (it runs: {})",
            all.iter().map(|i| i.kind()).collect::<Vec<_>>().join(", ")
        )
        .into()),
    }
}

/// Runs one instance of `kind` in this process.
pub fn run(kind: &str, ctx: &StageContext) -> Result<(), StageError> {
    find(kind)?.run(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two halves of the registry agree: the worker implements exactly the kinds the runner
    /// sends it (merges of shards are the runner's, in process).
    #[test]
    fn the_worker_implements_every_worker_kind() {
        let runner: Vec<&str> = stages::kinds::worker_kinds()
            .iter()
            .map(|d| d.kind)
            .collect();
        let worker: Vec<&str> = implementations().iter().map(|i| i.kind()).collect();
        assert_eq!(runner, worker);
        assert!(find("synth")
            .unwrap_err()
            .to_string()
            .contains("encode-text, "));
    }

    /// The widths the planner names when it refuses a fusion adaptor for `segment` are the
    /// models' own.
    #[test]
    fn the_planners_adaptor_widths_are_the_models() {
        let original = train::AdaptorConfig::original(384);
        assert_eq!(original.projection_dim, stages::pretrain::ORIGINAL_WIDTH);
        let fusion = train::AdaptorConfig::fusion(384);
        assert_eq!(fusion.fusion.d_model, stages::pretrain::FUSION_WIDTH);
    }
}
