//! `adaptor exec` (hidden): build one stage instance whose upstream is complete; what a Slurm job
//! of the Slurm executor runs. The key the submitter computed must still be the instance's key.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use pipeline::executor::{self, RunOptions};
use pipeline::Outcome;

use super::{hostname, Context};
use crate::cli::ExecSettings;
use crate::display::Display;
use crate::render;

pub fn exec(cx: &Context, s: &ExecSettings) -> Result<ExitCode> {
    let instance = &s.instance;
    let plan = cx.load_plan(&s.manifest)?;
    let idx = plan.instance(instance).ok_or_else(|| {
        anyhow!(
            "{}: no stage instance named `{instance}`",
            s.manifest.display()
        )
    })?;
    let url = s.store.url(Some(&plan));
    let store = cx.open_store(&url)?;
    let resolved = cx.resolve(&plan, false)?;
    if resolved.keys[idx].as_str() != s.key {
        bail!(
            "{instance}: its key is now {} but the job was submitted for {}: the manifest or an input changed since; run `adaptor run` again",
            resolved.keys[idx].short(),
            &s.key[..12.min(s.key.len())]
        );
    }
    let opts = RunOptions {
        jobs: 1,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory: crate::cli::machine_memory(),
        only: vec![instance.clone()],
        no_deps: true,
        host: hostname(),
        job: s.job.clone(),
        ..RunOptions::default()
    };
    let display = Arc::new(Display::new(true, cx.quiet()));
    let report = executor::run(
        &plan,
        &cx.reg,
        &store,
        &resolved,
        &opts,
        display,
        // No signal handler here: Slurm signals every process of a cancelled job at once, the
        // stage's too, so a graceful cancel would race the stage's own death and could record it
        // as a failure. SIGTERM's default action ends this process at once; the stage's group
        // dies with it (pipeline::process) and nothing is recorded.
        Arc::new(AtomicBool::new(false)),
    )?;
    match report
        .outcomes
        .iter()
        .find(|(n, _)| n == instance)
        .map(|(_, o)| o)
    {
        Some(Outcome::Ran { .. } | Outcome::UpToDate | Outcome::BuiltElsewhere) => {
            Ok(ExitCode::SUCCESS)
        }
        Some(Outcome::Failed { error, log }) => {
            eprint!(
                "{}",
                render::render_exec_failure(instance, error, log, &url)
            );
            Ok(ExitCode::from(1))
        }
        other => bail!("{instance}: {other:?}"),
    }
}
