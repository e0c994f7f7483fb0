//! `report`: every evaluation result of the manifest into `results.parquet`, `results.md`, plots
//! and `report.html`. No parameters. It needs no libtorch, so it runs in the runner's process
//! (`artifacts::report`).

use pipeline::{InputAccepts, InputSpec, StageContext, StageError};

use super::StageKind;
use crate::evaluate::{CLASSIFY, REPORT, RETRIEVE, SEGMENT, ZERO_SHOT};
use crate::pretrain::TRAIN_ADAPTOR;

crate::stage_params! {
    /// `report` takes no parameters.
    pub struct ReportParams {}
}

pub struct Report;

impl StageKind for Report {
    const KIND: &'static str = REPORT;
    // 2: also writes report.html.
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "Gathers every evaluation into results.parquet, results.md (the original's table shape, published numbers beside), plots and report.html (one self-contained page)";
    type Params = ReportParams;

    fn inputs() -> Vec<InputSpec> {
        vec![
            InputSpec::many(
                "results",
                InputAccepts::Stage(&[CLASSIFY, SEGMENT, ZERO_SHOT]),
                "evaluation results (e.g. `classify[*]`, `segment[*]`, `zero-shot[*]`)",
            ),
            InputSpec::many(
                "retrieval",
                InputAccepts::Stage(&[RETRIEVE]),
                "retrieval results (`retrieve[*]`), a table per backbone pair",
            )
            .optional(),
            InputSpec::many(
                "pretraining",
                InputAccepts::Stage(&[TRAIN_ADAPTOR]),
                "pre-training runs whose training curves the report shows",
            )
            .optional(),
        ]
    }
}

/// Runs the report in this process.
pub fn run(_: &ReportParams, ctx: &StageContext) -> Result<(), StageError> {
    artifacts::report::run_stage(ctx)
}
