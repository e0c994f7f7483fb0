//! `adaptor run`: build every stale instance of a manifest, here (a worker pool) or on Slurm,
//! with a live display; `--dry-run` lists what would run.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pipeline::executor::{self, RunOptions};
use pipeline::Outcome;
use pipeline::StoreUrl;

use super::{hostname, Context};
use crate::cli::{ExecutorKind, RunSettings};
use crate::display::Display;
use crate::render::{self, PlannedInstance, RunSummary};

pub fn run(cx: &Context, s: &RunSettings) -> Result<ExitCode> {
    let t0 = Instant::now();
    let quiet = cx.quiet();
    let plan = cx.load_plan(&s.manifest)?;
    let url = s.store.url(Some(&plan));
    let store = cx.open_store(&url)?;
    let resolved = cx.resolve(&plan, s.verify)?;
    for (e, fp) in plan.externals.iter().zip(&resolved.externals) {
        if !fp.mismatched.is_empty() && !quiet {
            eprint!(
                "{}",
                render::render_unverified_inputs(&e.reference(), &fp.mismatched)
            );
        }
    }
    let opts = RunOptions {
        jobs: s.jobs,
        threads: s.threads,
        memory: s.memory,
        only: s.only.clone(),
        force: s.force.clone(),
        dry_run: s.dry_run,
        host: String::new(),
        lease_secs: s.lease_secs,
        ..RunOptions::default()
    };
    let cancel = cancel_on_signals(quiet);
    let display = Arc::new(Display::new(cx.settings.verbose, quiet));
    let report = match ExecutorKind::choose(s.executor, &plan) {
        ExecutorKind::Slurm => {
            if !s.force.is_empty() {
                bail!("--force runs on the local executor; with Slurm, `adaptor forget` the instances, then run (a forgotten instance is rebuilt over its artifact)");
            }
            if matches!(url, StoreUrl::Memory) {
                bail!("the Slurm executor needs a store every node can reach (a shared folder or s3://), not memory://");
            }
            let slurm = pipeline::slurm::SlurmOptions {
                adaptor_bin: std::env::current_exe().context("cannot locate the adaptor binary")?,
                manifest: s
                    .manifest
                    .canonicalize()
                    .with_context(|| s.manifest.display().to_string())?,
                store: url.to_string(),
                cache_dir: cx.settings.cache.clone(),
                log_dir: plan
                    .executor
                    .slurm
                    .log_dir
                    .clone()
                    .unwrap_or_else(|| cx.settings.cache.join("slurm-logs")),
                poll: Duration::from_millis(500),
                detach: s.detach,
            };
            let opts = RunOptions {
                host: hostname(),
                ..opts.clone()
            };
            pipeline::slurm::run(
                &plan,
                &store,
                &resolved,
                &opts,
                &slurm,
                display.clone(),
                cancel.clone(),
            )?
        }
        ExecutorKind::Local => executor::run(
            &plan,
            &cx.reg,
            &store,
            &resolved,
            &opts,
            display.clone(),
            cancel.clone(),
        )?,
    };
    display.finish();
    cx.print_warnings(&store);
    if s.dry_run {
        let states = executor::states(&plan, &resolved, &store, opts.lease_secs)?;
        let would_run: Vec<PlannedInstance> = report
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::NotRun { .. }))
            .map(|(name, _)| {
                let i = plan.instance(name).expect("known");
                PlannedInstance {
                    name,
                    key: &resolved.keys[i],
                    state: &states[i],
                }
            })
            .collect();
        print!("{}", render::render_dry_run(&would_run, &report.outcomes));
        return Ok(ExitCode::SUCCESS);
    }
    let failed: Vec<_> = report.failed().collect();
    if !quiet {
        let count = |f: fn(&Outcome) -> bool| report.outcomes.iter().filter(|(_, o)| f(o)).count();
        eprint!(
            "{}",
            render::render_run_summary(&RunSummary {
                ran: report.ran(),
                up_to_date: count(|o| *o == Outcome::UpToDate),
                failed: failed.len(),
                submitted: count(|o| matches!(o, Outcome::Submitted { .. })),
                seconds: t0.elapsed().as_secs_f64(),
                store: &url,
                manifest: &s.manifest,
            })
        );
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprint!("{}", render::render_failures(&failed, &url));
    Ok(ExitCode::from(1))
}

/// A flag that Ctrl-C, SIGTERM (a scheduler, `kill`) and SIGHUP (a closed terminal) set: running
/// stages are stopped (their process groups killed), their leases released, and the run exits 1.
/// A second signal exits at once (130); the stages' process groups die with this process anyway
/// (pipeline::process), and nothing partial is visible in the store.
fn cancel_on_signals(quiet: bool) -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        if !quiet {
            eprintln!("\ncancelling: stopping running stages (Ctrl-C again to quit at once)");
        }
    });
    cancel
}
