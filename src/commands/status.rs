//! `adaptor status`: where each stage instance of a manifest stands in the store, as a table or
//! (`--json`) for machines.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use pipeline::executor;

use super::Context;
use crate::cli::StoreChoice;
use crate::exit::Exit;
use crate::render::{self, StatusRow};

/// With `exit_code`, exits 1 unless every instance is up to date.
pub fn status(
    cx: &Context,
    manifest: &Path,
    json: bool,
    exit_code: bool,
    store: &StoreChoice,
) -> Result<ExitCode> {
    let plan = cx.load_plan(manifest)?;
    let url = store.url(Some(&plan));
    let store = cx.read_store(&url)?;
    let resolved = cx.resolve(&plan, false)?;
    let states = executor::states(&plan, &resolved, &store, executor::LEASE_SECS)?;
    cx.print_warnings(&store);
    let rows: Vec<StatusRow> = plan
        .instances
        .iter()
        .zip(&resolved.keys)
        .zip(&states)
        .map(|((inst, key), state)| StatusRow {
            instance: &inst.name,
            kind: &inst.kind,
            key,
            state,
        })
        .collect();
    if json {
        print!("{}", render::render_status_json(&rows, &url));
    } else {
        print!("{}", render::render_status(&rows));
    }
    let all_up_to_date = states.iter().all(|s| *s == executor::State::UpToDate);
    Ok(if exit_code && !all_up_to_date {
        Exit::Failed
    } else {
        Exit::Done
    }
    .into())
}
