//! The error type of the stages crate. Every variant names the file and, where there is one, the
//! line (1-based, the header is line 1) and field at fault, because people read these messages.

use std::path::{Path, PathBuf};

/// Errors of image decoding, raw-dataset parsing and records writing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: cannot read CSV: {message}", path.display())]
    Csv { path: PathBuf, message: String },

    #[error("{}: missing column `{column}` (columns found: {found})", path.display())]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },

    #[error("{}, line {line}, field `{field}`: {message}", path.display())]
    Field {
        path: PathBuf,
        line: u64,
        field: String,
        message: String,
    },

    #[error("{}, line {line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },

    #[error("{}, line {line}: image {} does not exist", path.display(), image.display())]
    MissingImage {
        path: PathBuf,
        line: u64,
        image: PathBuf,
    },

    #[error("{}, line {line}: image {}: {message}", path.display(), image.display())]
    BadImage {
        path: PathBuf,
        line: u64,
        image: PathBuf,
        message: String,
    },

    #[error("{}: cannot decode image: {message}", path.display())]
    Decode { path: PathBuf, message: String },

    #[error("{}: DICOM file has no pixel data (PixelData element 7FE0,0010 is absent)", path.display())]
    NoPixelData { path: PathBuf },

    #[error("{}: {message}", path.display())]
    Layout { path: PathBuf, message: String },

    #[error("RLE {context}: {message}")]
    Rle { context: String, message: String },

    #[error("{}: cannot write table: {message}", path.display())]
    Table { path: PathBuf, message: String },

    /// A table `artifacts::portable` refused or could not write (the error names the file and
    /// column). Boxed: arrow's and parquet's errors are large.
    #[error(transparent)]
    Artifacts(Box<artifacts::Error>),

    /// A decode limit override (an environment variable's value, read by the binaries).
    #[error("{var}=`{value}` is not a positive integer")]
    DecodeLimit { var: &'static str, value: String },

    /// A parameter of `synth` (the stage or `adaptor synth`) out of its range.
    #[error("synth: {param} {message}")]
    SynthParam {
        param: &'static str,
        message: String,
    },

    /// An ingest input whose dataset kind is none of the four.
    #[error(
        "ingest: unknown dataset kind `{kind}` (expected one of {})",
        crate::synth::SynthDataset::NAMES.join(", ")
    )]
    UnknownDataset { kind: String },

    /// An image of a records table that cannot be loaded: the table, the row and its key, then
    /// the decoder's error (which names the image file).
    #[error("{}, row {row} (key `{key}`): {source}", records.display())]
    RecordImage {
        records: PathBuf,
        row: usize,
        key: String,
        source: Box<Error>,
    },

    /// A `preprocess` artifact whose files disagree with its description (`images.json`).
    #[error("{}: {message}", path.display())]
    Preprocessed { path: PathBuf, message: String },

    /// Stopped by the runner (Ctrl-C, a time limit).
    #[error("cancelled")]
    Cancelled,

    #[error("cannot start {threads} worker threads: {message}")]
    ThreadPool { threads: usize, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn decode(path: &Path, message: impl ToString) -> Self {
        Error::Decode {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Ingest errors are the crate's errors; the alias names them at the API.
pub type IngestError = Error;

impl From<artifacts::Error> for Error {
    fn from(e: artifacts::Error) -> Self {
        Error::Artifacts(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_errors_read_as_before_they_carried_fields() {
        let synth_n = Error::SynthParam {
            param: "n",
            message: "must be at least 1".into(),
        };
        assert_eq!(synth_n.to_string(), "synth: n must be at least 1");
        let synth_size = Error::SynthParam {
            param: "image_size",
            message: "16 is outside 32..=4096".into(),
        };
        assert_eq!(
            synth_size.to_string(),
            "synth: image_size 16 is outside 32..=4096"
        );
        let kind = Error::UnknownDataset {
            kind: "chexpert".into(),
        };
        assert_eq!(
            kind.to_string(),
            "ingest: unknown dataset kind `chexpert` (expected one of mimic-cxr, rsna, covidx, siim)"
        );
        let threads = Error::ThreadPool {
            threads: 3,
            message: "no memory".into(),
        };
        assert_eq!(
            threads.to_string(),
            "cannot start 3 worker threads: no memory"
        );
    }
}
