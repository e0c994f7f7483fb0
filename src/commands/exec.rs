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
    let plan = cx.load_plan(&s.manifest)?;
    let url = s.store.url(Some(&plan));
    let store = cx.open_store(&url)?;
    let resolved = cx.resolve(&plan, false)?;
    let mut members = Vec::new();
    for (instance, key) in &s.members {
        let idx = plan.instance(instance).ok_or_else(|| {
            anyhow!(
                "{}: no stage instance named `{instance}`",
                s.manifest.display()
            )
        })?;
        if resolved.keys[idx].as_str() != key {
            bail!(
                "{instance}: its key is now {} but the job was submitted for {}: the manifest or an input changed since; run `adaptor run` again",
                resolved.keys[idx].short(),
                &key[..12.min(key.len())]
            );
        }
        members.push(idx);
    }
    // A job group: a member whose upstream outside the group is not built (it failed in another
    // job) is skipped, and so are its dependents in the group; the others run. The skipped ones
    // leave nothing in the store and the runner reports them as not run because of that upstream.
    let mut skipped: Vec<usize> = Vec::new();
    if members.len() > 1 {
        let states = executor::states(&plan, &resolved, &store, executor::LEASE_SECS)?;
        for &m in &members {
            let missing = plan.instances[m].deps().find(|&d| {
                skipped.contains(&d) || (!members.contains(&d) && states[d].needs_run())
            });
            if let Some(d) = missing {
                eprintln!(
                    "{}: skipped, its upstream {} is {}",
                    plan.instances[m].name,
                    plan.instances[d].name,
                    if skipped.contains(&d) {
                        "skipped"
                    } else {
                        states[d].label()
                    }
                );
                skipped.push(m);
            }
        }
    }
    let run: Vec<String> = members
        .iter()
        .filter(|m| !skipped.contains(m))
        .map(|&m| plan.instances[m].name.clone())
        .collect();
    if run.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let opts = RunOptions {
        jobs: 1,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory: crate::cli::machine_memory(),
        only: run.clone(),
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
    let mut failed = false;
    for instance in &run {
        match report
            .outcomes
            .iter()
            .find(|(n, _)| n == instance)
            .map(|(_, o)| o)
        {
            Some(Outcome::Ran { .. } | Outcome::UpToDate | Outcome::BuiltElsewhere) => {}
            Some(Outcome::Failed { error, log }) => {
                eprint!(
                    "{}",
                    render::render_exec_failure(instance, error, log, &url)
                );
                failed = true;
            }
            // a dependent of a failed member of the group
            Some(Outcome::NotRun { because }) if members.len() > 1 => {
                eprintln!("{instance}: not run because {because} failed");
            }
            other => bail!("{instance}: {other:?}"),
        }
    }
    // A group's job succeeds even when a member failed, so that Slurm keeps the jobs that depend
    // on its other members; the store says which members were built.
    Ok(if failed && members.len() == 1 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
