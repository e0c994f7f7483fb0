//! `adaptor gc`: delete the artifacts none of the listed manifests reference (with their dead
//! runners' staging folders and finished job records); `--dry-run` only lists them.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use pipeline::executor;

use super::Context;
use crate::cli::StoreChoice;
use crate::render;

pub fn gc(
    cx: &Context,
    manifests: &[PathBuf],
    dry_run: bool,
    json: bool,
    store: &StoreChoice,
) -> Result<ExitCode> {
    let (artifacts, first_plan) = cx.artifacts_of(manifests)?;
    let referenced: HashSet<_> = artifacts.into_iter().collect();
    let url = store.url(first_plan.as_ref());
    let store = cx.open_store(&url)?;
    let kinds: HashSet<String> = cx.reg.iter().map(|s| s.kind().to_string()).collect();
    // Asked once, and only if there are job records: can Slurm be asked at all?
    let slurm = OnceCell::new();
    let job_alive = |id: &str| -> Option<bool> {
        if !*slurm.get_or_init(pipeline::executor::jobs::reachable) {
            return None;
        }
        pipeline::executor::jobs::job_states(&[id.to_string()])
            .ok()
            .map(|st| {
                st.get(id)
                    .is_some_and(|s| pipeline::executor::jobs::is_active(s))
            })
    };
    let scope = pipeline::ops::GcScope {
        kinds: &kinds,
        referenced: &referenced,
        lease_secs: executor::LEASE_SECS,
        job_alive: &job_alive,
    };
    let report = pipeline::ops::gc(&store, &scope, dry_run)?;
    cx.print_warnings(&store);
    if json {
        print!("{}", render::render_gc_json(&report, dry_run, &url));
    } else {
        print!("{}", render::render_gc(&report, dry_run, &url));
    }
    Ok(ExitCode::SUCCESS)
}
