//! `adaptor forget`: drops instances from the manifest's run index, so `status` shows them missing
//! and the next run rebuilds them (their artifacts stay in the store until then).

use std::process::ExitCode;

use anyhow::Result;

use super::path::Standing;
use super::Context;
use crate::cli::ForgetSettings;
use crate::render;

pub fn forget(cx: &Context, s: &ForgetSettings) -> Result<ExitCode> {
    let standing = Standing::of(cx, &s.manifest, &s.store, true)?;
    let which = standing.matching(&s.patterns)?;
    let forgotten = pipeline::ops::forget(
        &standing.plan,
        &standing.resolved,
        &standing.states,
        &standing.store,
        &which,
    )?;
    cx.print_warnings(&standing.store);
    if !cx.quiet() {
        print!("{}", render::render_forget(&forgotten, &s.manifest));
    }
    Ok(ExitCode::SUCCESS)
}
