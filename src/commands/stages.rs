//! `adaptor stages`: the stage kinds this binary knows, described from the registry (`--json`
//! for machines).

use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use crate::render::{self, StageDoc};

pub fn stages(cx: &Context, json: bool) -> Result<ExitCode> {
    let docs: Vec<StageDoc> = cx.reg.iter().map(|s| StageDoc::of(s.as_ref())).collect();
    let render = if json {
        render::render_stages_json
    } else {
        render::render_stages
    };
    print!("{}", render(&docs, pipeline::stage::RUNNER_PARAMS));
    Ok(ExitCode::SUCCESS)
}
