//! `adaptor stages`: the stage kinds this binary knows, described from the registry.

use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use crate::render::{self, StageDoc};

pub fn stages(cx: &Context) -> Result<ExitCode> {
    let docs: Vec<StageDoc> = cx.reg.iter().map(|s| StageDoc::of(s.as_ref())).collect();
    print!(
        "{}",
        render::render_stages(&docs, pipeline::stage::RUNNER_PARAMS)
    );
    Ok(ExitCode::SUCCESS)
}
