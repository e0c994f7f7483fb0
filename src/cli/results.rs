//! The arguments of the commands that read results (`results`, `diff`) and their validated
//! settings; a submodule of `cli` so that the command line's two stages stay in one place.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use artifacts::report::Split;
use clap::Args;

use super::{StoreArg, StoreChoice};

#[derive(Args)]
pub struct ResultsArgs {
    manifest: PathBuf,
    /// Only the tables of this dataset, task or head (`rsna`, `classification`, `mlp`), or
    /// one table by its name (`rsna-classification-mlp`).
    #[arg(long, value_name = "TASK")]
    task: Option<String>,
    /// This metric (a key of result.json's `test`/`valid`: `auroc`, `macro_f1`, `dice`...)
    /// instead of each table's headline metric.
    #[arg(long, value_name = "METRIC")]
    metric: Option<String>,
    /// The split the metric is read from.
    #[arg(long, default_value = "test", value_parser = ["test", "valid"])]
    split: String,
    /// Machine-readable output (metrics as in result.json, 0..1).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// One CSV line per cell (metrics as in result.json, 0..1).
    #[arg(long)]
    csv: bool,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Args)]
pub struct DiffArgs {
    manifest_a: PathBuf,
    manifest_b: PathBuf,
    /// B's store, when it is not A's (default: --store, else B's own [store]).
    #[arg(long, value_name = "URL")]
    store_b: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

/// How a command that can speak to machines writes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Human,
    Json,
    Csv,
}

pub struct ResultsSettings {
    pub manifest: PathBuf,
    pub task: Option<String>,
    pub metric: Option<String>,
    pub split: Split,
    pub format: OutputFormat,
    pub store: StoreChoice,
}

pub struct DiffSettings {
    pub manifest_a: PathBuf,
    pub manifest_b: PathBuf,
    pub json: bool,
    /// A's store: `--store`, else A's [store], else ./artifacts.
    pub store_a: StoreChoice,
    /// B's store: `--store-b`, else `--store`, else B's [store], else ./artifacts.
    pub store_b: StoreChoice,
}

impl ResultsArgs {
    pub(super) fn settings(self) -> Result<ResultsSettings> {
        Ok(ResultsSettings {
            manifest: self.manifest,
            task: self.task,
            metric: self.metric,
            split: match self.split.as_str() {
                "valid" => Split::Valid,
                _ => Split::Test,
            },
            format: match (self.json, self.csv) {
                (true, _) => OutputFormat::Json,
                (_, true) => OutputFormat::Csv,
                _ => OutputFormat::Human,
            },
            store: StoreChoice::new(&self.store)?,
        })
    }
}

impl DiffArgs {
    pub(super) fn settings(self) -> Result<DiffSettings> {
        let store_b = StoreArg {
            store: self.store_b.or_else(|| self.store.store.clone()),
        };
        Ok(DiffSettings {
            manifest_a: self.manifest_a,
            manifest_b: self.manifest_b,
            json: self.json,
            store_a: StoreChoice::new(&self.store)?,
            store_b: StoreChoice::new(&store_b)
                .map_err(|e| anyhow!("{}", e.to_string().replace("--store", "--store-b")))?,
        })
    }
}
