//! Synthetic miniatures of the four datasets in their exact raw layouts (reference E.1–E.4).
//!
//! Labels, reports, boxes and masks are derived from what the renderer drew, so a model can learn
//! them from the pixels. Every image has its own random stream derived from `(seed, dataset,
//! index)`: output is identical for the same arguments whatever the thread count.

mod covidx;
mod formats;
mod mimic;
pub mod render;
mod rsna;
mod siim;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use render::{Rng, Side, Zone};

pub use formats::oversized_png;
pub use mimic::CHEXPERT_LABELS;

/// The marker file a synth artifact carries so ingest knows the layout.
pub const MARKER: &str = "_dataset.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum SynthDataset {
    #[serde(rename = "mimic-cxr")]
    MimicCxr,
    #[serde(rename = "rsna")]
    Rsna,
    #[serde(rename = "covidx")]
    Covidx,
    #[serde(rename = "siim")]
    Siim,
}

impl SynthDataset {
    pub const NAMES: &'static [&'static str] = &["mimic-cxr", "rsna", "covidx", "siim"];

    pub fn name(self) -> &'static str {
        match self {
            SynthDataset::MimicCxr => "mimic-cxr",
            SynthDataset::Rsna => "rsna",
            SynthDataset::Covidx => "covidx",
            SynthDataset::Siim => "siim",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mimic-cxr" | "mimic" => Some(SynthDataset::MimicCxr),
            "rsna" => Some(SynthDataset::Rsna),
            "covidx" => Some(SynthDataset::Covidx),
            "siim" => Some(SynthDataset::Siim),
            _ => None,
        }
    }
}

impl fmt::Display for SynthDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`generate`] wrote; also the content of the marker file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SynthSummary {
    pub dataset: SynthDataset,
    pub n: usize,
    pub seed: u64,
    pub image_size: u32,
    /// MIMIC-CXR: the `validate` + `test` share of regular studies, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_fraction: Option<f64>,
    /// Image files written (MIMIC-CXR includes lateral views).
    pub images: usize,
    /// Images per label (dataset-specific names: `normal`, `pneumonia`, `COVID-19`, ...).
    pub labels: BTreeMap<String, usize>,
}

/// The default image side: small enough that all four datasets at n = 200 generate in seconds.
pub const DEFAULT_IMAGE_SIZE: u32 = 256;

/// Writes a miniature of `dataset` into `out` (created if needed): `n` studies (MIMIC-CXR),
/// patients (RSNA) or images (COVIDx, SIIM), images of side `image_size`.
pub fn generate(dataset: SynthDataset, out: &Path, n: usize, seed: u64) -> Result<SynthSummary> {
    generate_with_size(dataset, out, n, seed, DEFAULT_IMAGE_SIZE)
}

pub fn generate_with_size(
    dataset: SynthDataset,
    out: &Path,
    n: usize,
    seed: u64,
    image_size: u32,
) -> Result<SynthSummary> {
    generate_with(dataset, out, n, seed, image_size, None)
}

/// The share of regular MIMIC-CXR studies drawn into the official `validate` and `test` splits
/// (half each) when not set: large, so that a miniature of 200 studies validates on about 20.
pub const DEFAULT_VALID_FRACTION: f64 = 0.1;

/// [`generate_with_size`], with MIMIC-CXR's `validate` + `test` share of regular studies
/// (`valid_fraction`, default [`DEFAULT_VALID_FRACTION`]; the real dataset's official split holds
/// about 2.2 % of its images). Other datasets draw their splits at ingest and refuse it.
pub fn generate_with(
    dataset: SynthDataset,
    out: &Path,
    n: usize,
    seed: u64,
    image_size: u32,
    valid_fraction: Option<f64>,
) -> Result<SynthSummary> {
    if let Some(f) = valid_fraction {
        if dataset != SynthDataset::MimicCxr {
            return Err(Error::SynthParam {
                param: "valid_fraction",
                message: format!(
                    "is for mimic-cxr only (its official split); {dataset} draws its splits at \
                     ingest"
                ),
            });
        }
        if !(f > 0.0 && f < 1.0) {
            return Err(Error::SynthParam {
                param: "valid_fraction",
                message: format!("{f} is outside (0, 1)"),
            });
        }
    }
    if n == 0 {
        return Err(Error::SynthParam {
            param: "n",
            message: "must be at least 1".into(),
        });
    }
    if !(32..=4096).contains(&image_size) {
        return Err(Error::SynthParam {
            param: "image_size",
            message: format!("{image_size} is outside 32..=4096"),
        });
    }
    mkdir(out)?;
    let Written { images, labels } = match dataset {
        SynthDataset::MimicCxr => mimic::generate(
            out,
            n,
            seed,
            image_size,
            valid_fraction.unwrap_or(DEFAULT_VALID_FRACTION),
        )?,
        SynthDataset::Rsna => rsna::generate(out, n, seed, image_size)?,
        SynthDataset::Covidx => covidx::generate(out, n, seed, image_size)?,
        SynthDataset::Siim => siim::generate(out, n, seed, image_size)?,
    };
    let summary = SynthSummary {
        dataset,
        n,
        seed,
        image_size,
        valid_fraction,
        images,
        labels,
    };
    let marker = out.join(MARKER);
    std::fs::write(
        &marker,
        serde_json::to_vec_pretty(&summary).expect("summary serialises"),
    )
    .map_err(|e| Error::io(&marker, e))?;
    Ok(summary)
}

/// Reads the marker a synth artifact carries.
pub fn read_marker(root: &Path) -> Result<SynthSummary> {
    let path = root.join(MARKER);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Layout {
        path,
        message: format!("not a synth marker: {e}"),
    })
}

// ---------------------------------------------------------------------------------------------
// What the per-dataset writers share.

/// What one dataset writer produced: image files written, and images per label.
struct Written {
    images: usize,
    labels: BTreeMap<String, usize>,
}

pub(super) fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))
}

pub(super) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// A gzipped text file written as it grows (a CSV of any length in bounded memory).
pub(super) struct GzCsv {
    path: std::path::PathBuf,
    enc: flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>,
}

impl GzCsv {
    pub(super) fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(GzCsv {
            path: path.to_path_buf(),
            enc: flate2::write::GzEncoder::new(
                std::io::BufWriter::new(file),
                flate2::Compression::default(),
            ),
        })
    }

    pub(super) fn push(&mut self, text: &str) -> Result<()> {
        self.enc
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }

    pub(super) fn finish(self) -> Result<()> {
        let path = self.path;
        self.enc
            .finish()
            .and_then(|mut w| w.flush())
            .map_err(|e| Error::io(&path, e))
    }
}

pub(super) fn count(labels: &mut BTreeMap<String, usize>, l: &str) {
    *labels.entry(l.to_string()).or_default() += 1;
}

pub(super) fn pick_side(rng: &mut Rng) -> Side {
    if rng.chance(0.5) {
        Side::Right
    } else {
        Side::Left
    }
}

pub(super) fn pick_zone(rng: &mut Rng) -> Zone {
    [Zone::Upper, Zone::Middle, Zone::Lower][rng.below(3)]
}
