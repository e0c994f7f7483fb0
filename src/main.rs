//! `adaptor`: the command line. Parses arguments, reads the environment, draws progress and sets
//! the exit code; everything else happens in the `pipeline` and `stages` libraries.

mod display;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use pipeline::executor::{self, Outcome, RunOptions, State};
use pipeline::store::{ArtifactManifest, StoreSettings};
use pipeline::{FingerprintCache, Plan, StageKey, StageRegistry, Store, StoreUrl};

#[derive(Parser)]
#[command(
    name = "adaptor",
    version,
    about = "Parameter-efficient medical vision-language pre-training (Adaptor) as an incremental pipeline",
    long_about = "Runs experiment manifests as a DAG of content-addressed stages: ingest raw datasets, \
                  encode with frozen backbones, train the adaptor, evaluate heads, report. Each stage \
                  instance's output is stored under a key derived from its parameters and inputs, so \
                  re-running a manifest only builds what changed.\n\n\
                  Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, \
                  AWS_ENDPOINT_URL and AWS_ALLOW_HTTP configure s3:// stores (ADAPTOR_S3_RETRIES: \
                  retries per request, default 10); ADAPTOR_CACHE_DIR \
                  overrides the local cache folder (default ~/.cache/adaptor)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// More output: stage log lines as they are written.
    #[arg(short, long, global = true)]
    verbose: bool,

    /// Less output: only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Local cache folder (fingerprints of external inputs, copies of remote artifacts).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct StoreArg {
    /// Artifact store: a folder, s3://bucket/prefix or memory://. Overrides the manifest's [store].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Build every stale stage instance of a manifest; skip what is up to date.
    Run {
        manifest: PathBuf,
        /// Stage instances to run at once (default: number of CPUs).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Only these instances (name glob or stage name; repeatable), plus what they need.
        #[arg(long, value_name = "PATTERN")]
        only: Vec<String>,
        /// Show what would run, run nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Rehash the content of external inputs instead of trusting unchanged file stats.
        #[arg(long)]
        verify: bool,
        /// Where stages run: `local` (a worker pool here) or `slurm` (one batch job per stage
        /// instance). Default: the manifest's [executor], else local.
        #[arg(long, value_name = "KIND", value_parser = ["local", "slurm"])]
        executor: Option<String>,
        /// With the Slurm executor: submit and return instead of following the jobs.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Build one stage instance whose upstream is already complete (what a cluster job runs).
    #[command(hide = true)]
    Exec {
        manifest: PathBuf,
        #[arg(long)]
        instance: String,
        /// The key the submitter computed; a mismatch (the manifest or inputs changed since) is an error.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// One line per stage instance: up-to-date / stale / missing / failed / running.
    Status {
        manifest: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Why a stage instance would re-run: which parameter, input or stage version changed.
    Explain {
        manifest: PathBuf,
        /// Instance name (`train[vision=dinov2-s]`), or a stage name with a single instance.
        stage: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete artifacts that none of the listed manifests reference.
    Gc {
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        /// List what would be deleted, delete nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Rehash artifacts against their `_manifest.json`: those the manifests reference, or the
    /// whole store with --all. Names each bad file; exits 1 if any artifact is bad.
    Verify {
        manifests: Vec<PathBuf>,
        /// Every artifact in the store, referenced or not.
        #[arg(long)]
        all: bool,
        /// Move each bad artifact to `_quarantine/` (its `_manifest.json` first), so the next run
        /// rebuilds it.
        #[arg(long)]
        quarantine: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an artifact: by key (or a unique prefix of one) or by the path of its folder.
    Show {
        target: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List the stage kinds this binary knows, with their parameters and inputs.
    Stages,
    /// Embed texts or images with a frozen backbone into a Parquet table (runs `adaptor-torch
    /// embed`): `adaptor embed text --backbone DIR [--pooling pooler|cls|mean] --input FILE
    /// --output OUT.parquet`, `adaptor embed image --backbone DIR [--normalize imagenet|half]
    /// --input IMG... --output OUT.parquet`.
    Embed {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Write a synthetic miniature of a dataset in its exact raw layout (chest-X-ray-like images
    /// whose findings are visible in the pixels and stated in reports and labels).
    Synth {
        /// mimic-cxr, rsna, covidx or siim.
        #[arg(value_parser = ["mimic-cxr", "rsna", "covidx", "siim"])]
        dataset: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Studies (mimic-cxr), patients (rsna) or images (covidx, siim).
        #[arg(long, default_value_t = 200)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        image_size: u32,
    },
    /// Read a raw dataset folder into a records table (what the `ingest` stage does), outside a manifest.
    Ingest {
        /// mimic-cxr, rsna, covidx or siim.
        #[arg(value_parser = ["mimic-cxr", "rsna", "covidx", "siim"])]
        dataset: String,
        /// The raw dataset folder, as downloaded.
        #[arg(long, value_name = "DIR")]
        raw: PathBuf,
        /// Output folder (records.parquet, summary.json, skipped.parquet).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Write bad rows to skipped.parquet beside the output instead of failing.
        #[arg(long)]
        skip_bad: bool,
        #[arg(long, default_value_t = 0)]
        split_seed: u32,
        /// decode: every image must decode; exists: only check that the files exist.
        #[arg(long, default_value = "decode", value_parser = ["decode", "exists"])]
        verify: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A flag that Ctrl-C, SIGTERM (a scheduler, `kill`) and SIGHUP (a closed terminal) set: running
/// stages are stopped (their process groups killed), their leases released, and the run exits 1.
/// A second signal exits at once; the stages' process groups die with this process anyway
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

/// Image decode limits (README, "Bad input"): the defaults unless overridden here; the torch
/// worker inherits the same variables.
fn decode_limits_from_env() -> Result<()> {
    use stages::images::DecodeLimits;
    let var = |name| std::env::var(name).ok();
    DecodeLimits::with_overrides(
        var(DecodeLimits::PIXELS_VAR).as_deref(),
        var(DecodeLimits::BYTES_VAR).as_deref(),
    )?
    .set();
    Ok(())
}

fn registry() -> StageRegistry {
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(pipeline::builtin::CommandStage));
    stages::register(&mut reg);
    stages::register_torch(&mut reg, torch_worker());
    reg
}

/// The libtorch worker that runs the model stages: $ADAPTOR_TORCH, else `adaptor-torch` next to
/// this executable. Kept out of this process: loading libtorch costs ~0.34 s per start.
fn torch_worker() -> PathBuf {
    if let Some(p) = std::env::var_os("ADAPTOR_TORCH") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("adaptor-torch")))
        .unwrap_or_else(|| "adaptor-torch".into())
}

fn cache_dir(cli: &Cli) -> PathBuf {
    if let Some(d) = &cli.cache_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("ADAPTOR_CACHE_DIR") {
        return PathBuf::from(d);
    }
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) => PathBuf::from(x).join("adaptor"),
        None => std::env::var_os("HOME").map_or_else(
            || PathBuf::from(".adaptor-cache"),
            |h| PathBuf::from(h).join(".cache/adaptor"),
        ),
    }
}

/// The lease timeout of `run`: `ADAPTOR_LEASE_SECS` when set (the chaos tests shorten it so that
/// a suspended runner loses its key within a test), else the default.
fn lease_secs() -> Result<f64> {
    match std::env::var("ADAPTOR_LEASE_SECS") {
        Err(_) => Ok(executor::LEASE_SECS),
        Ok(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
            _ => bail!("ADAPTOR_LEASE_SECS: expected a positive number of seconds, got `{v}`"),
        },
    }
}

fn store_settings() -> StoreSettings {
    StoreSettings {
        aws: std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect(),
        s3_retries: std::env::var("ADAPTOR_S3_RETRIES")
            .ok()
            .and_then(|v| v.parse().ok()),
    }
}

/// `--store` beats the manifest's `[store]`, which beats `./artifacts`.
fn store_url(arg: &StoreArg, plan: Option<&Plan>) -> Result<StoreUrl> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    if let Some(s) = &arg.store {
        return StoreUrl::parse(s, &cwd).map_err(|m| anyhow!("--store: {m}"));
    }
    if let Some(url) = plan.and_then(|p| p.store.clone()) {
        return Ok(url);
    }
    Ok(StoreUrl::Local(cwd.join("artifacts")))
}

fn open_store(url: &StoreUrl, cache: &Path) -> Result<Store> {
    Store::open(url, &store_settings(), cache).with_context(|| format!("cannot open store {url}"))
}

/// For commands that only read: a local store that does not exist yet is not created.
fn read_store(url: &StoreUrl, cache: &Path) -> Result<Store> {
    Store::open_existing(url, &store_settings(), cache)
        .with_context(|| format!("cannot open store {url}"))
}

fn load_plan(path: &Path, reg: &StageRegistry) -> Result<Plan> {
    // Manifest errors already say file:line:col: key: what.
    pipeline::plan::load(path, reg).map_err(|e| anyhow!("{e}"))
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    decode_limits_from_env()?;
    let reg = registry();
    let cache = cache_dir(&cli);
    let fp_cache = FingerprintCache::new(&cache);
    match &cli.command {
        Command::Run {
            manifest,
            jobs,
            only,
            dry_run,
            verify,
            executor: executor_arg,
            detach,
            store,
        } => {
            let t0 = Instant::now();
            let plan = load_plan(manifest, &reg)?;
            let url = store_url(store, Some(&plan))?;
            let store = open_store(&url, &cache)?;
            let resolved = executor::resolve(&plan, &reg, &fp_cache, *verify)?;
            for (e, fp) in plan.externals.iter().zip(&resolved.externals) {
                if !fp.mismatched.is_empty() && !cli.quiet {
                    eprintln!(
                        "warning: {}: {} file(s) changed content without changing size or time: {}",
                        e.reference(),
                        fp.mismatched.len(),
                        fp.mismatched
                            .iter()
                            .take(5)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let opts = RunOptions {
                jobs: jobs.unwrap_or(cpus).max(1),
                threads: cpus,
                only: only.clone(),
                dry_run: *dry_run,
                host: String::new(),
                lease_secs: lease_secs()?,
                ..RunOptions::default()
            };
            let cancel = cancel_on_signals(cli.quiet);
            let display = Arc::new(display::Display::new(cli.verbose, cli.quiet));
            let use_slurm = executor_arg
                .as_deref()
                .unwrap_or(plan.executor.kind.as_str())
                == "slurm";
            let report = if use_slurm {
                if matches!(url, StoreUrl::Memory) {
                    bail!("the Slurm executor needs a store every node can reach (a shared folder or s3://), not memory://");
                }
                let slurm = pipeline::slurm::SlurmOptions {
                    adaptor_bin: std::env::current_exe()
                        .context("cannot locate the adaptor binary")?,
                    manifest: manifest
                        .canonicalize()
                        .with_context(|| manifest.display().to_string())?,
                    store: url.to_string(),
                    cache_dir: cache.clone(),
                    log_dir: plan
                        .executor
                        .slurm
                        .log_dir
                        .clone()
                        .unwrap_or_else(|| cache.join("slurm-logs")),
                    poll: std::time::Duration::from_millis(500),
                    detach: *detach,
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
            } else {
                executor::run(
                    &plan,
                    &reg,
                    &store,
                    &resolved,
                    &opts,
                    display.clone(),
                    cancel.clone(),
                )?
            };
            display.finish();
            print_warnings(&store, cli.quiet);
            if *dry_run {
                let states = executor::states(&plan, &resolved, &store, opts.lease_secs)?;
                for (name, outcome) in &report.outcomes {
                    if let Outcome::NotRun { .. } = outcome {
                        let i = plan.instance(name).expect("known");
                        println!(
                            "would run  {}  {}  ({})",
                            resolved.keys[i].short(),
                            name,
                            states[i].label()
                        );
                    }
                }
                if report.outcomes.iter().all(|(_, o)| *o == Outcome::UpToDate) {
                    println!(
                        "nothing to do: all {} instance(s) up to date",
                        report.outcomes.len()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let failed: Vec<_> = report.failed().collect();
            let submitted = report
                .outcomes
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Submitted { .. }))
                .count();
            if submitted > 0 && !cli.quiet {
                eprintln!(
                    "{submitted} submitted to Slurm; follow with `adaptor status {}`",
                    manifest.display()
                );
            }
            if !cli.quiet {
                let up = report
                    .outcomes
                    .iter()
                    .filter(|(_, o)| *o == Outcome::UpToDate)
                    .count();
                eprintln!(
                    "{} ran, {} up to date, {} failed or not run ({:.2}s, store {})",
                    report.ran(),
                    up,
                    failed.len(),
                    t0.elapsed().as_secs_f64(),
                    url
                );
            }
            if failed.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for (name, outcome) in &failed {
                match outcome {
                    Outcome::Failed { error, log } => {
                        eprintln!("error: {name} failed: {error}");
                        if !log.is_empty() {
                            eprintln!("  log: {}", display_path(&url, log));
                        }
                    }
                    Outcome::NotRun { because } => {
                        eprintln!("  not run: {name} (upstream {because} failed)")
                    }
                    Outcome::Cancelled => eprintln!("  cancelled: {name}"),
                    _ => {}
                }
            }
            Ok(ExitCode::from(1))
        }
        Command::Exec {
            manifest,
            instance,
            key,
            store,
        } => {
            let plan = load_plan(manifest, &reg)?;
            let idx = plan.instance(instance).ok_or_else(|| {
                anyhow!(
                    "{}: no stage instance named `{instance}`",
                    manifest.display()
                )
            })?;
            let url = store_url(store, Some(&plan))?;
            let store = open_store(&url, &cache)?;
            let resolved = executor::resolve(&plan, &reg, &fp_cache, false)?;
            if resolved.keys[idx].as_str() != key {
                bail!(
                    "{instance}: its key is now {} but the job was submitted for {}: the manifest or an input changed since; run `adaptor run` again",
                    resolved.keys[idx].short(),
                    &key[..12.min(key.len())]
                );
            }
            // An array task (a shard) is named as squeue and the job records name it: `1234_5`.
            let array_task = std::env::var("SLURM_ARRAY_JOB_ID")
                .ok()
                .zip(std::env::var("SLURM_ARRAY_TASK_ID").ok())
                .map(|(a, t)| format!("{a}_{t}"));
            let job = array_task
                .or_else(|| std::env::var("SLURM_JOB_ID").ok())
                .map(|id| format!("slurm job {id}"));
            let opts = RunOptions {
                jobs: 1,
                threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                only: vec![instance.clone()],
                no_deps: true,
                host: hostname(),
                job,
                ..RunOptions::default()
            };
            let display = Arc::new(display::Display::new(true, cli.quiet));
            let report = executor::run(
                &plan,
                &reg,
                &store,
                &resolved,
                &opts,
                display,
                // No signal handler here: Slurm signals every process of a cancelled job at once,
                // the stage's too, so a graceful cancel would race the stage's own death and could
                // record it as a failure. SIGTERM's default action ends this process at once; the
                // stage's group dies with it (pipeline::process) and nothing is recorded.
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
                    eprintln!(
                        "error: {instance} failed: {error}\n  log: {}",
                        display_path(&url, log)
                    );
                    Ok(ExitCode::from(1))
                }
                other => bail!("{instance}: {other:?}"),
            }
        }
        Command::Status {
            manifest,
            json,
            store,
        } => {
            let plan = load_plan(manifest, &reg)?;
            let url = store_url(store, Some(&plan))?;
            let store = read_store(&url, &cache)?;
            let resolved = executor::resolve(&plan, &reg, &fp_cache, false)?;
            let states = executor::states(&plan, &resolved, &store, executor::LEASE_SECS)?;
            print_warnings(&store, cli.quiet);
            if *json {
                let rows: Vec<serde_json::Value> = plan
                    .instances
                    .iter()
                    .zip(&resolved.keys)
                    .zip(&states)
                    .map(|((inst, key), st)| {
                        let mut row = serde_json::json!({
                            "instance": inst.name, "kind": inst.kind, "state": st.label(), "key": key.as_str(),
                        });
                        match st {
                            State::Stale { previous } => row["previous_key"] = previous.as_str().into(),
                            State::Failed { error, log } => {
                                row["error"] = error.as_str().into();
                                row["log"] = display_path(&url, log).into();
                            }
                            State::Running { owner, silent } => {
                                row["owner"] = owner.as_str().into();
                                if let Some(s) = silent {
                                    row["silent_secs"] = (s.round() as u64).into();
                                }
                            }
                            State::Queued { job } => row["job"] = job.as_str().into(),
                            State::Corrupt { bad } => {
                                row["bad_files"] = bad
                                    .iter()
                                    .map(|f| serde_json::json!({"path": f.path, "problem": f.problem}))
                                    .collect::<Vec<_>>()
                                    .into()
                            }
                            _ => {}
                        }
                        row
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for ((inst, key), st) in plan.instances.iter().zip(&resolved.keys).zip(&states) {
                    let detail = match st {
                        State::Failed { error, .. } => format!("  ({})", first_line(error)),
                        State::Running {
                            owner,
                            silent: None,
                        } => format!("  (by {owner})"),
                        State::Running {
                            owner,
                            silent: Some(s),
                        } => format!(
                            "  (by {owner}; silent for {}: no progress or log line)",
                            pipeline::stage::format_duration(std::time::Duration::from_secs(
                                s.max(0.0) as u64
                            ))
                        ),
                        State::Queued { job } => format!("  (slurm job {job})"),
                        State::Stale { previous } => format!("  (was {})", previous.short()),
                        State::Corrupt { bad } => format!(
                            "  ({})",
                            bad.iter()
                                .map(|f| format!("{}: {}", f.path, f.problem))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                        _ => String::new(),
                    };
                    println!("{:<10}  {}  {}{detail}", st.label(), key.short(), inst.name);
                }
                let up = states.iter().filter(|s| **s == State::UpToDate).count();
                if up == states.len() {
                    println!("all {} instance(s) up to date", states.len());
                } else {
                    println!("{up} of {} instance(s) up to date", states.len());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            manifest,
            stage,
            store,
        } => {
            let plan = load_plan(manifest, &reg)?;
            let idx = match plan.instance(stage) {
                Some(i) => i,
                None => {
                    let m = plan.select(stage);
                    match m.as_slice() {
                        [one] => *one,
                        [] => bail!("{}: no stage instance named `{stage}`", manifest.display()),
                        many => bail!(
                            "`{stage}` matches {} instances; name one: {}",
                            many.len(),
                            many.iter()
                                .take(6)
                                .map(|&i| plan.instances[i].name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
            };
            let url = store_url(store, Some(&plan))?;
            let store = read_store(&url, &cache)?;
            let resolved = executor::resolve(&plan, &reg, &fp_cache, false)?;
            for line in pipeline::ops::explain(&plan, &resolved, &store, &fp_cache, idx)? {
                println!("{line}");
            }
            print_warnings(&store, cli.quiet);
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc {
            manifests,
            dry_run,
            store,
        } => {
            let mut referenced = HashSet::new();
            let mut first_plan = None;
            for m in manifests {
                let plan = load_plan(m, &reg)?;
                let resolved = executor::resolve(&plan, &reg, &fp_cache, false)?;
                for (inst, key) in plan.instances.iter().zip(resolved.keys) {
                    referenced.insert((inst.kind.clone(), key));
                }
                first_plan.get_or_insert(plan);
            }
            let url = store_url(store, first_plan.as_ref())?;
            let store = open_store(&url, &cache)?;
            let kinds: HashSet<String> = reg.iter().map(|s| s.kind().to_string()).collect();
            // Asked once, and only if there are job records: can Slurm be asked at all?
            let slurm = std::cell::OnceCell::new();
            let job_alive = |id: &str| -> Option<bool> {
                if !*slurm.get_or_init(pipeline::slurm::reachable) {
                    return None;
                }
                pipeline::slurm::job_states(&[id.to_string()])
                    .ok()
                    .map(|st| st.get(id).is_some_and(|s| pipeline::slurm::is_active(s)))
            };
            let scope = pipeline::ops::GcScope {
                kinds: &kinds,
                referenced: &referenced,
                lease_secs: executor::LEASE_SECS,
                job_alive: &job_alive,
            };
            let report = pipeline::ops::gc(&store, &scope, *dry_run)?;
            print_warnings(&store, cli.quiet);
            let total: u64 = report.deleted.iter().map(|(_, b)| b).sum();
            for (path, bytes) in &report.deleted {
                println!(
                    "{} {path} ({})",
                    if *dry_run { "would delete" } else { "deleted" },
                    human_bytes(*bytes)
                );
            }
            for (path, why) in &report.skipped {
                println!("skipped {path}: {why}");
            }
            println!(
                "{} {} folder(s), {}; kept {} referenced artifact(s) in {url}",
                if *dry_run { "would delete" } else { "deleted" },
                report.deleted.len(),
                human_bytes(total),
                report.kept
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            manifests,
            all,
            quarantine,
            store,
        } => {
            if manifests.is_empty() && !*all {
                bail!("name the manifests whose artifacts to verify, or pass --all for the whole store");
            }
            let mut items = Vec::new();
            let mut first_plan = None;
            for m in manifests {
                let plan = load_plan(m, &reg)?;
                let resolved = executor::resolve(&plan, &reg, &fp_cache, false)?;
                for (inst, key) in plan.instances.iter().zip(resolved.keys) {
                    items.push((inst.kind.clone(), key));
                }
                first_plan.get_or_insert(plan);
            }
            let url = store_url(store, first_plan.as_ref())?;
            let store = if *quarantine {
                open_store(&url, &cache)?
            } else {
                read_store(&url, &cache)?
            };
            if *all {
                items.extend(pipeline::ops::all_artifacts(&store)?);
            }
            items.sort();
            items.dedup();
            let checked = pipeline::ops::verify(&store, &items, *quarantine)?;
            print_warnings(&store, cli.quiet);
            let (mut files, mut bytes, mut bad) = (0usize, 0u64, 0usize);
            for v in &checked {
                files += v.report.files;
                bytes += v.report.bytes;
                if v.report.bad.is_empty() {
                    continue;
                }
                bad += 1;
                for f in &v.report.bad {
                    println!("bad  {}: {}", display_path(&url, &f.location), f.problem);
                }
                if let Some(to) = &v.quarantined {
                    println!(
                        "quarantined {}/{} -> {} (the next run rebuilds it)",
                        v.kind,
                        v.key.short(),
                        display_path(&url, to)
                    );
                }
            }
            println!(
                "verified {} artifact(s), {files} file(s), {}: {bad} bad",
                checked.len(),
                human_bytes(bytes)
            );
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Show { target, store } => {
            let url = store_url(store, None)?;
            let (manifest, log) = find_artifact(target, &url, &cache)?;
            print!("{}", display::describe_artifact(&manifest));
            if cli.verbose {
                if let Some(log) = log {
                    println!("\nlog:\n{log}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth {
            dataset,
            out,
            n,
            seed,
            image_size,
        } => {
            let ds = stages::synth::SynthDataset::parse(dataset).expect("clap checked the name");
            let summary = stages::synth::generate_with_size(ds, out, *n, *seed, *image_size)
                .with_context(|| format!("adaptor synth {dataset}"))?;
            if !cli.quiet {
                eprintln!(
                    "wrote {} images of {dataset} ({} px) into {}: {}",
                    summary.images,
                    summary.image_size,
                    out.display(),
                    summary
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest {
            dataset,
            raw,
            out,
            skip_bad,
            split_seed,
            verify,
        } => {
            let kind = stages::ingest::resolve_kind(dataset, raw)?;
            let opts = stages::ingest::IngestOptions {
                split_seed: *split_seed,
                skip_bad: *skip_bad,
                verify: stages::ingest::Verify::parse(verify).expect("clap checked the value"),
                ..Default::default()
            };
            std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
            let quiet = cli.quiet;
            let report = stages::ingest::ingest(kind, raw, out, &opts, &|line: &str| {
                if !quiet {
                    eprintln!("{line}");
                }
            })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.skipped > 0 {
                eprintln!(
                    "{} bad row(s) skipped: see {}",
                    report.skipped,
                    out.join("skipped.parquet").display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed { args } => {
            let w = torch_worker();
            let st = std::process::Command::new(&w).arg("embed").args(args).status().map_err(|e| {
                anyhow!("cannot start {}: {e} (build it with `cargo build --workspace`, or set ADAPTOR_TORCH)", w.display())
            })?;
            if st.code().is_none() {
                eprintln!(
                    "error: {} {}",
                    w.display(),
                    pipeline::process::describe_exit(&st)
                );
            }
            Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8))
        }
        Command::Stages => {
            for stage in reg.iter() {
                println!(
                    "{} (version {}): {}",
                    stage.kind(),
                    stage.version(),
                    stage.about()
                );
                for p in stage.params() {
                    let default = p
                        .default
                        .as_ref()
                        .map_or("required".to_string(), |d| format!("default {d}"));
                    println!(
                        "  param {} ({}; {default}): {}",
                        p.name,
                        p.ty.describe(),
                        p.doc
                    );
                }
                for i in stage.inputs() {
                    println!(
                        "  input {}{}: {}",
                        i.name,
                        if i.required { "" } else { " (optional)" },
                        i.doc
                    );
                }
                if let Some(s) = stage.sharding() {
                    println!(
                        "  shards = N: N instances with {} = \"i/N\"; the merge {}",
                        s.param, s.merge
                    );
                }
            }
            println!("every kind also takes (not part of the key):");
            for (name, doc) in pipeline::stage::RUNNER_PARAMS {
                println!("  param {name}: {doc}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Finds an artifact by folder path, by full key, or by a unique key prefix (6+ hex digits).
fn find_artifact(
    target: &str,
    url: &StoreUrl,
    cache: &Path,
) -> Result<(ArtifactManifest, Option<String>)> {
    let as_path = Path::new(target);
    if as_path.exists() {
        let dir = if as_path.is_file() {
            as_path.parent().unwrap_or(Path::new("."))
        } else {
            as_path
        };
        let text = std::fs::read_to_string(dir.join("_manifest.json")).with_context(|| {
            format!(
                "{} is not a complete artifact (no readable _manifest.json)",
                dir.display()
            )
        })?;
        let m: ArtifactManifest = serde_json::from_str(&text)
            .with_context(|| format!("{}/_manifest.json", dir.display()))?;
        let log = std::fs::read_to_string(dir.join("_log.txt")).ok();
        return Ok((m, log));
    }
    if target.len() < 6 || !target.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("`{target}` is neither an artifact folder nor a key (6 or more hex digits)");
    }
    let store = read_store(url, cache)?;
    let mut found = Vec::new();
    for kind in store.list_dirs("")? {
        if kind.starts_with('_') {
            continue;
        }
        for key in store.list_dirs(&kind)? {
            if key.starts_with(target) {
                found.push((kind.clone(), key));
            }
        }
    }
    match found.as_slice() {
        [] => bail!("no artifact with key {target}… in {url}"),
        [(kind, key)] => {
            let key =
                StageKey::parse(key).ok_or_else(|| anyhow!("{kind}/{key} is not a key folder"))?;
            let m: ArtifactManifest = store
                .get_json(&Store::manifest_path(kind, &key))?
                .ok_or_else(|| {
                    anyhow!("{kind}/{} is not complete (no _manifest.json)", key.short())
                })?;
            let log = store
                .get(&m.file_rel("_log.txt"))?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            Ok((m, log))
        }
        many => bail!(
            "key prefix {target} is ambiguous: {}",
            many.iter()
                .map(|(k, key)| format!("{k}/{key}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Prints what the store noticed and tolerated (unreadable records treated as stale).
fn print_warnings(store: &Store, quiet: bool) {
    for w in store.take_warnings() {
        if !quiet {
            eprintln!("warning: {w}");
        }
    }
}

fn display_path(url: &StoreUrl, rel: &str) -> String {
    match url {
        StoreUrl::Local(p) => p.join(rel).display().to_string(),
        other => format!("{other}/{rel}"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}
