//! `adaptor synth`: a synthetic miniature of a dataset in its exact raw layout.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::Context;
use crate::cli::SynthSettings;
use crate::render;

pub fn synth(cx: &Context, s: &SynthSettings) -> Result<ExitCode> {
    let summary = stages::synth::generate_with(
        s.dataset,
        &s.out,
        s.n,
        s.seed,
        s.image_size,
        s.valid_fraction,
    )
    .with_context(|| format!("adaptor synth {}", s.name))?;
    if !cx.quiet() {
        eprint!(
            "{}",
            render::render_synth_summary(
                &s.name,
                &s.out,
                summary.images,
                summary.image_size,
                &summary.labels
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}
