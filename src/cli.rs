//! The command line in two stages, as ripgrep does: the raw `clap` arguments ([`Cli`]), then
//! [`Settings`], validated once (flags, the environment variables this binary honours, the
//! machine's CPU count), so that the commands never parse or second-guess their input again.
//! `embed`'s options are in [`embed`].

mod embed;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

pub use embed::EmbedCommand;
mod results;
pub use results::{DiffSettings, OutputFormat, ResultsSettings};
mod artifacts;
mod settings;

pub use artifacts::{DagFormat, DagSettings, ForgetSettings, PathSettings, PullSettings};

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
                  retries per request, default 10; ADAPTOR_S3_CACHE_TABLES=1: copy the embedding \
                  tables stages stream from S3 into the cache folder first); ADAPTOR_CACHE_DIR \
                  overrides the local cache folder (default ~/.cache/adaptor).",
    after_help = crate::exit::EXIT_CODES_HELP
)]
pub struct Cli {
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
        /// Rebuild these instances even though they are up to date (name glob or stage name;
        /// repeatable). The old artifact is replaced in one step: readers see the old one or the
        /// new one, never none. What depends on them keeps its key and is not rebuilt.
        #[arg(long, value_name = "PATTERN")]
        force: Vec<String>,
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
        /// The instance to build; repeated for the members of a Slurm job group, built one after
        /// another in dependency order.
        #[arg(long, required = true)]
        instance: Vec<String>,
        /// The key the submitter computed, one per --instance in the same order; a mismatch (the
        /// manifest or inputs changed since) is an error.
        #[arg(long, required = true)]
        key: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// One line per stage instance: up-to-date / stale / missing / failed / running.
    Status {
        manifest: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit 1 unless every instance is up to date (for CI).
        #[arg(long)]
        exit_code: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Why a stage instance would re-run: which parameter, input or stage version changed.
    ///
    /// Compared with the instance's last build from this manifest, else with the last build of
    /// the same instance name from any manifest in the store (a copied or renamed manifest; the
    /// output names it), or with the instance of the same name in --against OTHER_MANIFEST.
    Explain {
        manifest: PathBuf,
        /// Instance name (`train[vision=dinov2-s]`), or a stage name with a single instance.
        stage: String,
        /// Compare with the instance of the same name in this manifest instead of the last build.
        #[arg(long, value_name = "OTHER_MANIFEST")]
        against: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The experiment's results tables (the numbers of the report's results.md).
    ///
    /// One table per task: rows vision backbone and text encoder (or ablation), columns label
    /// fractions, cells mean ± std over seeds (n), the original's published number beside where
    /// the backbone names match. Read from each evaluation's result.json in the store; the
    /// evaluations not built yet are named.
    Results(results::ResultsArgs),
    /// Compare two manifests (or two stores): parameters, inputs and metrics that differ.
    ///
    /// Which instances differ and by which parameters or inputs (params diff), and the test
    /// metrics of the evaluations among them side by side with the change, where both are built
    /// (metrics diff).
    Diff(results::DiffArgs),
    /// Delete artifacts that none of the listed manifests reference.
    Gc {
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        /// List what would be deleted, delete nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
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
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an artifact: by key (or a unique prefix of one) or by the path of its folder.
    Show {
        target: String,
        /// Machine-readable output: the artifact's `_manifest.json` and where it is.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List the stage kinds this binary knows, with their parameters and inputs.
    Stages {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    Path(artifacts::PathArgs),
    Pull(artifacts::PullArgs),
    Forget(artifacts::ForgetArgs),
    Dag(artifacts::DagArgs),
    /// Embed texts or images with a frozen backbone into a Parquet table (the encode stages' code
    /// on files, run by the libtorch worker `adaptor-torch`).
    Embed {
        #[command(subcommand)]
        what: embed::EmbedCommand,
    },
    /// Print a completion script for a shell: `adaptor completions bash > ~/.local/share/bash-completion/completions/adaptor`.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
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
        /// mimic-cxr: share of studies in the official validate + test splits (default 0.1;
        /// the real dataset's is about 0.022).
        #[arg(long, value_name = "F")]
        valid_fraction: Option<f64>,
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

pub use settings::*;
