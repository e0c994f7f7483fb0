//! `adaptor ingest`: a raw dataset folder into a records table, as the `ingest` stage does, but
//! outside a manifest; prints the summary as JSON.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::Context;
use crate::cli::IngestSettings;
use crate::render;

pub fn ingest(cx: &Context, s: &IngestSettings) -> Result<ExitCode> {
    let kind = stages::ingest::resolve_kind(&s.dataset, &s.raw)?;
    let opts = stages::ingest::IngestOptions {
        split_seed: s.split_seed,
        skip_bad: s.skip_bad,
        verify: s.verify,
        ..Default::default()
    };
    std::fs::create_dir_all(&s.out).with_context(|| s.out.display().to_string())?;
    let quiet = cx.quiet();
    let report = stages::ingest::ingest(kind, &s.raw, &s.out, &opts, &|line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.skipped > 0 {
        eprint!("{}", render::render_ingest_skipped(report.skipped, &s.out));
    }
    Ok(ExitCode::SUCCESS)
}
