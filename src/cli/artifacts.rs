//! The arguments of the commands that find, copy, forget and draw a manifest's artifacts
//! (`path`, `pull`, `forget`, `dag`), raw and validated.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::{StoreArg, StoreChoice};

/// Print where an instance's current artifact is (its folder, or FILE in it): a local path,
/// or an s3:// URL. Exits 1, saying whether it is missing, stale, failed or running, when
/// there is no current complete artifact.
#[derive(Args)]
pub(super) struct PathArgs {
    /// The experiment manifest (TOML).
    manifest: PathBuf,
    /// Instance name (`report`, `train[vision=dinov2-s]`), or a stage name or glob matching one.
    instance: String,
    /// A file of the artifact (`report.md`, `tables/results.parquet`); default: its folder.
    file: Option<String>,
    /// Machine-readable output: instance, kind, key, state, path (null unless up to date).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

/// Copy a manifest's artifacts (or --only some) from the store (local or S3) to a folder, each
/// with its `_manifest.json`, every file's digest checked as it is written.
#[derive(Args)]
pub(super) struct PullArgs {
    /// The experiment manifest (TOML).
    manifest: PathBuf,
    /// Only these instances (name glob or stage name; repeatable); default: all of them.
    #[arg(long, value_name = "PATTERN")]
    only: Vec<String>,
    /// Destination folder; gets the store's layout (`<kind>/<key>/`), so it can serve as a
    /// local store (`--store DIR`).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Link instead of copying (local stores only): hard links on the same filesystem, symbolic
    /// links otherwise. Digests are still checked.
    #[arg(long)]
    link: bool,
    /// Machine-readable output: one object per artifact and the totals.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

/// Drop instances from the manifest's run index: `status` shows them missing and the next run
/// rebuilds them. Their artifacts stay in the store until then (or until gc, once no manifest
/// references them).
#[derive(Args)]
pub(super) struct ForgetArgs {
    /// The experiment manifest (TOML) whose run index forgets them.
    manifest: PathBuf,
    /// Instances to forget (name glob or stage name; at least one).
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
    #[command(flatten)]
    store: StoreArg,
}

/// The instance graph with each instance's state, as Graphviz dot or a mermaid block.
#[derive(Args)]
pub(super) struct DagArgs {
    /// The experiment manifest (TOML).
    manifest: PathBuf,
    /// `dot` (Graphviz: `adaptor dag m.toml | dot -Tsvg > dag.svg`) or `mermaid` (a fenced block
    /// for a markdown page).
    #[arg(long, default_value = "dot", value_parser = ["dot", "mermaid"])]
    format: String,
    /// Only these instances (name glob or stage name; repeatable), with what they need.
    #[arg(long, value_name = "PATTERN")]
    only: Vec<String>,
    #[command(flatten)]
    store: StoreArg,
}

pub struct PathSettings {
    pub manifest: PathBuf,
    pub instance: String,
    pub file: Option<String>,
    pub json: bool,
    pub store: StoreChoice,
}

pub struct PullSettings {
    pub manifest: PathBuf,
    pub only: Vec<String>,
    pub to: PathBuf,
    pub link: bool,
    pub json: bool,
    pub store: StoreChoice,
}

pub struct ForgetSettings {
    pub manifest: PathBuf,
    pub patterns: Vec<String>,
    pub store: StoreChoice,
}

/// The text formats of `adaptor dag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagFormat {
    Dot,
    Mermaid,
}

pub struct DagSettings {
    pub manifest: PathBuf,
    pub format: DagFormat,
    pub only: Vec<String>,
    pub store: StoreChoice,
}

impl PathArgs {
    pub(super) fn settings(self) -> Result<PathSettings> {
        if let Some(f) = &self.file {
            if let Err(e) = pipeline::store::check_rel_path(f) {
                bail!("FILE `{f}` {e}; name a file inside the artifact, like `report.md`");
            }
        }
        Ok(PathSettings {
            store: StoreChoice::new(&self.store)?,
            manifest: self.manifest,
            instance: self.instance,
            file: self.file,
            json: self.json,
        })
    }
}

impl PullArgs {
    pub(super) fn settings(self) -> Result<PullSettings> {
        Ok(PullSettings {
            store: StoreChoice::new(&self.store)?,
            manifest: self.manifest,
            only: self.only,
            to: self.to,
            link: self.link,
            json: self.json,
        })
    }
}

impl ForgetArgs {
    pub(super) fn settings(self) -> Result<ForgetSettings> {
        Ok(ForgetSettings {
            store: StoreChoice::new(&self.store)?,
            manifest: self.manifest,
            patterns: self.patterns,
        })
    }
}

impl DagArgs {
    pub(super) fn settings(self) -> Result<DagSettings> {
        Ok(DagSettings {
            store: StoreChoice::new(&self.store)?,
            manifest: self.manifest,
            format: match self.format.as_str() {
                "mermaid" => DagFormat::Mermaid,
                _ => DagFormat::Dot,
            },
            only: self.only,
        })
    }
}
