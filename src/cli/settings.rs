//! The validated half of the command line: [`Settings`] and one [`CommandSettings`] per command,
//! built from the raw `clap` arguments once (flags, the environment variables this binary honours,
//! the machine's CPU count), so that the commands never parse or second-guess their input again.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap_complete::Shell;
use pipeline::executor;
use pipeline::store::StoreSettings;
use pipeline::{Plan, StoreUrl};
use stages::images::DecodeLimits;
use stages::ingest::Verify;
use stages::synth::SynthDataset;

use super::{
    Cli, Command, DagSettings, DiffSettings, EmbedCommand, ForgetSettings, PathSettings,
    PullSettings, ResultsSettings, StoreArg,
};

/// Everything a command needs from the command line and the environment, validated.
pub struct Settings {
    pub verbose: bool,
    pub quiet: bool,
    /// `--cache-dir`, else `$ADAPTOR_CACHE_DIR`, else `$XDG_CACHE_HOME/adaptor`, else
    /// `~/.cache/adaptor`.
    pub cache: PathBuf,
    /// How to reach remote stores (`AWS_*`, `ADAPTOR_S3_RETRIES`).
    pub store_settings: StoreSettings,
    /// Image decode limits (README, "Bad input"); the torch worker inherits the same variables.
    pub decode_limits: DecodeLimits,
    /// The libtorch worker that runs the model stages: `$ADAPTOR_TORCH`, else `adaptor-torch`
    /// next to this executable. Kept out of this process: loading libtorch costs ~0.34 s.
    pub torch_worker: PathBuf,
    pub command: CommandSettings,
}

/// One validated command.
pub enum CommandSettings {
    Run(RunSettings),
    Exec(ExecSettings),
    Status {
        manifest: PathBuf,
        json: bool,
        exit_code: bool,
        store: StoreChoice,
    },
    Explain {
        manifest: PathBuf,
        stage: String,
        against: Option<PathBuf>,
        json: bool,
        store: StoreChoice,
    },
    Results(ResultsSettings),
    Diff(DiffSettings),
    Gc {
        manifests: Vec<PathBuf>,
        dry_run: bool,
        json: bool,
        store: StoreChoice,
    },
    Verify {
        manifests: Vec<PathBuf>,
        all: bool,
        quarantine: bool,
        json: bool,
        store: StoreChoice,
    },
    Show {
        target: String,
        json: bool,
        store: StoreChoice,
    },
    Stages {
        json: bool,
    },
    Path(PathSettings),
    Pull(PullSettings),
    Forget(ForgetSettings),
    Dag(DagSettings),
    Embed(EmbedCommand),
    Completions(Shell),
    Synth(SynthSettings),
    Ingest(IngestSettings),
}

/// Where stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

pub struct RunSettings {
    pub manifest: PathBuf,
    /// Stage instances at once (at least 1).
    pub jobs: usize,
    /// CPUs of this machine: the threads the running stages share.
    pub threads: usize,
    /// Memory available to this run in bytes ([`machine_memory`]): the running stages' budgets
    /// share it.
    pub memory: u64,
    pub only: Vec<String>,
    /// `--force`: rebuilt even though up to date.
    pub force: Vec<String>,
    pub dry_run: bool,
    pub verify: bool,
    /// `--executor`; `None` defers to the manifest's `[executor]`.
    pub executor: Option<ExecutorKind>,
    pub detach: bool,
    /// `$ADAPTOR_LEASE_SECS` (the chaos tests shorten it so that a suspended runner loses its
    /// key within a test), else the default.
    pub lease_secs: f64,
    pub store: StoreChoice,
}

pub struct ExecSettings {
    pub manifest: PathBuf,
    /// (instance, key the submitter computed): one, or the members of a job group in order.
    pub members: Vec<(String, String)>,
    /// The cluster job this runs in, as squeue and the job records name it (`slurm job 1234`,
    /// `slurm job 1234_5` for a task of an array job).
    pub job: Option<String>,
    pub store: StoreChoice,
}

pub struct SynthSettings {
    pub dataset: SynthDataset,
    /// As typed (`mimic-cxr`), for messages.
    pub name: String,
    pub out: PathBuf,
    pub n: usize,
    pub seed: u64,
    pub image_size: u32,
    pub valid_fraction: Option<f64>,
}

pub struct IngestSettings {
    pub dataset: String,
    pub raw: PathBuf,
    pub out: PathBuf,
    pub skip_bad: bool,
    pub split_seed: u32,
    pub verify: Verify,
}

/// The artifact store a command uses: `--store` beats the manifest's `[store]`, which beats
/// `./artifacts`.
pub struct StoreChoice {
    flag: Option<StoreUrl>,
    default: StoreUrl,
}

impl StoreChoice {
    pub(super) fn new(arg: &StoreArg) -> Result<StoreChoice> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let flag = match &arg.store {
            Some(s) => Some(StoreUrl::parse(s, &cwd).map_err(|m| anyhow!("--store: {m}"))?),
            None => None,
        };
        Ok(StoreChoice {
            flag,
            default: StoreUrl::Local(cwd.join("artifacts")),
        })
    }

    /// The store for a command that read `plan` (or none).
    pub fn url(&self, plan: Option<&Plan>) -> StoreUrl {
        self.flag
            .clone()
            .or_else(|| plan.and_then(|p| p.store.clone()))
            .unwrap_or_else(|| self.default.clone())
    }
}

impl Settings {
    /// The second stage: raw arguments and the environment → validated settings.
    pub fn from_cli(cli: Cli) -> Result<Settings> {
        let var = |name: &str| std::env::var(name).ok();
        let decode_limits = DecodeLimits::with_overrides(
            var(DecodeLimits::PIXELS_VAR).as_deref(),
            var(DecodeLimits::BYTES_VAR).as_deref(),
        )?;
        let command = CommandSettings::from_command(cli.command)?;
        Ok(Settings {
            verbose: cli.verbose,
            quiet: cli.quiet,
            cache: cache_dir(cli.cache_dir),
            store_settings: StoreSettings {
                aws: std::env::vars()
                    .filter(|(k, _)| k.starts_with("AWS_"))
                    .collect(),
                s3_retries: var("ADAPTOR_S3_RETRIES").and_then(|v| v.parse().ok()),
                cache_tables: var("ADAPTOR_S3_CACHE_TABLES")
                    .is_some_and(|v| v == "1" || v == "true"),
            },
            decode_limits,
            torch_worker: torch_worker(),
            command,
        })
    }
}

impl CommandSettings {
    fn from_command(command: Command) -> Result<CommandSettings> {
        Ok(match command {
            Command::Run {
                manifest,
                jobs,
                only,
                force,
                dry_run,
                verify,
                executor,
                detach,
                store,
            } => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                CommandSettings::Run(RunSettings {
                    manifest,
                    jobs: jobs.unwrap_or(cpus).max(1),
                    threads: cpus,
                    memory: machine_memory(),
                    only,
                    force,
                    dry_run,
                    verify,
                    executor: executor.as_deref().map(ExecutorKind::parse).transpose()?,
                    detach,
                    lease_secs: lease_secs(std::env::var("ADAPTOR_LEASE_SECS").ok().as_deref())?,
                    store: StoreChoice::new(&store)?,
                })
            }
            Command::Exec {
                manifest,
                instance,
                key,
                store,
            } => {
                let var = |name: &str| std::env::var(name).ok();
                // An array task (a shard) is named as squeue and the job records name it: `1234_5`.
                let array_task = var("SLURM_ARRAY_JOB_ID")
                    .zip(var("SLURM_ARRAY_TASK_ID"))
                    .map(|(a, t)| format!("{a}_{t}"));
                if instance.len() != key.len() {
                    bail!(
                        "exec: {} --instance but {} --key (one key per instance)",
                        instance.len(),
                        key.len()
                    );
                }
                CommandSettings::Exec(ExecSettings {
                    manifest,
                    members: instance.into_iter().zip(key).collect(),
                    job: array_task
                        .or_else(|| var("SLURM_JOB_ID"))
                        .map(|id| format!("slurm job {id}")),
                    store: StoreChoice::new(&store)?,
                })
            }
            Command::Status {
                manifest,
                json,
                exit_code,
                store,
            } => CommandSettings::Status {
                manifest,
                json,
                exit_code,
                store: StoreChoice::new(&store)?,
            },
            Command::Explain {
                manifest,
                stage,
                against,
                json,
                store,
            } => CommandSettings::Explain {
                manifest,
                stage,
                against,
                json,
                store: StoreChoice::new(&store)?,
            },
            Command::Results(args) => CommandSettings::Results(args.settings()?),
            Command::Diff(args) => CommandSettings::Diff(args.settings()?),
            Command::Gc {
                manifests,
                dry_run,
                json,
                store,
            } => CommandSettings::Gc {
                manifests,
                dry_run,
                json,
                store: StoreChoice::new(&store)?,
            },
            Command::Verify {
                manifests,
                all,
                quarantine,
                json,
                store,
            } => {
                if manifests.is_empty() && !all {
                    bail!("name the manifests whose artifacts to verify, or pass --all for the whole store");
                }
                CommandSettings::Verify {
                    manifests,
                    all,
                    quarantine,
                    json,
                    store: StoreChoice::new(&store)?,
                }
            }
            Command::Show {
                target,
                json,
                store,
            } => CommandSettings::Show {
                target,
                json,
                store: StoreChoice::new(&store)?,
            },
            Command::Stages { json } => CommandSettings::Stages { json },
            Command::Embed { what } => CommandSettings::Embed(what),
            Command::Completions { shell } => CommandSettings::Completions(shell),
            Command::Path(a) => CommandSettings::Path(a.settings()?),
            Command::Pull(a) => CommandSettings::Pull(a.settings()?),
            Command::Forget(a) => CommandSettings::Forget(a.settings()?),
            Command::Dag(a) => CommandSettings::Dag(a.settings()?),
            Command::Synth {
                dataset,
                out,
                n,
                seed,
                image_size,
                valid_fraction,
            } => CommandSettings::Synth(SynthSettings {
                dataset: SynthDataset::parse(&dataset).expect("clap checked the name"),
                name: dataset,
                out,
                n,
                seed,
                image_size,
                valid_fraction,
            }),
            Command::Ingest {
                dataset,
                raw,
                out,
                skip_bad,
                split_seed,
                verify,
            } => CommandSettings::Ingest(IngestSettings {
                dataset,
                raw,
                out,
                skip_bad,
                split_seed,
                verify: Verify::parse(&verify).expect("clap checked the value"),
            }),
        })
    }
}

impl ExecutorKind {
    fn parse(s: &str) -> Result<ExecutorKind> {
        match s {
            "local" => Ok(ExecutorKind::Local),
            "slurm" => Ok(ExecutorKind::Slurm),
            other => bail!("unknown executor `{other}` (expected local or slurm)"),
        }
    }

    /// `--executor` when given, else the manifest's `[executor] kind`.
    pub fn choose(flag: Option<ExecutorKind>, plan: &Plan) -> ExecutorKind {
        flag.unwrap_or(if plan.executor.kind == "slurm" {
            ExecutorKind::Slurm
        } else {
            ExecutorKind::Local
        })
    }
}

fn cache_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d;
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

fn torch_worker() -> PathBuf {
    if let Some(p) = std::env::var_os("ADAPTOR_TORCH") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("adaptor-torch")))
        .unwrap_or_else(|| Path::new("adaptor-torch").into())
}

/// The lease timeout of `run` from `$ADAPTOR_LEASE_SECS` (`None`: unset).
/// The memory this process may use, in bytes: `MemAvailable` of `/proc/meminfo`, or the cgroup's
/// `memory.max` less its `memory.current` when that is smaller (a Slurm job, a container);
/// [`pipeline::stage::DEFAULT_MEMORY`] where neither can be read.
pub fn machine_memory() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let available = read("/proc/meminfo").and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .and_then(|m| m.trim().parse::<u64>().ok())
        .map(|max| {
            let used = read("/sys/fs/cgroup/memory.current")
                .and_then(|c| c.trim().parse::<u64>().ok())
                .unwrap_or(0);
            max.saturating_sub(used)
        });
    match (available, cgroup) {
        (Some(a), Some(c)) => a.min(c),
        (Some(a), None) => a,
        (None, Some(c)) => c,
        (None, None) => pipeline::stage::DEFAULT_MEMORY,
    }
    .max(pipeline::stage::MIN_MEMORY)
}

fn lease_secs(var: Option<&str>) -> Result<f64> {
    match var {
        None => Ok(executor::LEASE_SECS),
        Some(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
            _ => bail!("ADAPTOR_LEASE_SECS: expected a positive number of seconds, got `{v}`"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn lease_secs_must_be_a_positive_finite_number() {
        assert_eq!(lease_secs(None).unwrap(), executor::LEASE_SECS);
        assert_eq!(lease_secs(Some("2.5")).unwrap(), 2.5);
        for bad in ["0", "-1", "inf", "NaN", "soon"] {
            let e = lease_secs(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("got `{bad}`")), "{e}");
        }
    }

    fn settings(args: &[&str]) -> Result<Settings> {
        Settings::from_cli(Cli::try_parse_from(args).expect("valid arguments"))
    }

    #[test]
    fn verify_needs_manifests_or_all() {
        let e = settings(&["adaptor", "verify"]).err().expect("an error");
        assert_eq!(
            e.to_string(),
            "name the manifests whose artifacts to verify, or pass --all for the whole store"
        );
        assert!(settings(&["adaptor", "verify", "--all"]).is_ok());
    }

    #[test]
    fn store_flag_is_parsed_once_and_beats_the_default() {
        let e = settings(&["adaptor", "status", "m.toml", "--store", "ftp://x"])
            .err()
            .expect("an error");
        assert!(
            e.to_string()
                .starts_with("--store: unsupported store scheme"),
            "{e}"
        );
        let s = settings(&["adaptor", "status", "m.toml", "--store", "s3://b/p"]).unwrap();
        let CommandSettings::Status { store, .. } = &s.command else {
            panic!("status")
        };
        assert_eq!(store.url(None).to_string(), "s3://b/p");
        let s = settings(&["adaptor", "status", "m.toml"]).unwrap();
        let CommandSettings::Status { store, .. } = &s.command else {
            panic!("status")
        };
        assert!(store.url(None).to_string().ends_with("/artifacts"));
    }

    #[test]
    fn run_takes_at_least_one_job() {
        let s = settings(&["adaptor", "run", "m.toml", "-j", "0", "--executor", "slurm"]).unwrap();
        let CommandSettings::Run(run) = &s.command else {
            panic!("run")
        };
        assert_eq!(run.jobs, 1);
        assert_eq!(run.executor, Some(ExecutorKind::Slurm));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
