//! The runner's error type: one enum, with variants that carry what a person needs to act.

use std::fmt;
use std::path::PathBuf;

/// A problem in a manifest, located at `file:line:col` and a dotted key path.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file itself (unreadable, include cycle).
    pub line: usize,
    pub col: usize,
    /// Dotted path of the offending key, e.g. `stages.train.params.lr`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Manifest(#[from] ManifestError),

    #[error("store {url}: {message}")]
    Store { url: String, message: String },

    #[error("store {url}: {source}")]
    ObjectStore {
        url: String,
        #[source]
        source: object_store::Error,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("artifact {what}: {message}")]
    Artifact { what: String, message: String },

    #[error("no stage instance matches `{pattern}`{hint}")]
    NoSuchInstance { pattern: String, hint: String },

    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds a path to `std::io::Error`s.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
