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
    /// Transparent: the manifest error is the whole message, not a cause printed twice.
    #[error(transparent)]
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

    /// An external input (a dataset or backbone folder) could not be fingerprinted.
    #[error("{reference} ({kind}): cannot fingerprint {}: {source}", path.display())]
    Fingerprint {
        /// `datasets.rsna`.
        reference: String,
        kind: String,
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },

    /// Something under a hashed folder that is neither a regular file nor a folder.
    #[error("{}: is {what}; only regular files and folders are hashed", path.display())]
    NotRegularFile { path: PathBuf, what: &'static str },

    #[error("{}: directories nested more than {depth} deep (a symlink loop?)", path.display())]
    NestedTooDeep { path: PathBuf, depth: usize },

    #[error("{instance}: cancelled while waiting for another runner")]
    CancelledWaiting { instance: String },

    /// `adaptor exec` (no dependencies built) on an instance whose upstream is not in the store.
    #[error("{targets}: upstream {upstream} is not complete ({state}) in the store")]
    UpstreamIncomplete {
        /// The selected instances, comma-separated.
        targets: String,
        upstream: String,
        /// The upstream's state label (`missing`, `stale`, ...).
        state: &'static str,
    },

    #[error("cannot start the store's I/O runtime: {0}")]
    StoreRuntime(#[source] std::io::Error),

    #[error("{url}: conditional delete is only available on a local store")]
    NoConditionalDelete { url: String },

    /// An object store request inside a transfer, before the transfer's context is added.
    #[error("{0}")]
    Request(#[source] object_store::Error),

    #[error("store {url}: upload of {rel}: {source}")]
    Upload {
        url: String,
        /// Store-relative path of the object.
        rel: String,
        #[source]
        source: Box<Error>,
    },

    #[error("cannot run `{program}` ({source}): is Slurm installed and on PATH on this node?")]
    SlurmUnavailable {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed: {stderr}")]
    SlurmFailed { command: String, stderr: String },

    /// `sbatch --parsable` printed something other than a job id (`what`: `job` or `array job`).
    #[error("sbatch printed no {what} id: {output:?}")]
    NoJobId { what: &'static str, output: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of problem an [`Error`] is, for a caller that must tell them apart (the binary's
/// exit codes): the caller's input, the store or the scheduler under it, or a build that stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The manifest, an external input it names (a dataset folder that cannot be read), or what
    /// the caller asked for (an instance that does not exist).
    Input,
    /// The artifact store: unreachable, refused, a request that kept failing, a record or
    /// artifact in it that does not read back, local file system errors under it.
    Store,
    /// The cluster scheduler (Slurm): not installed, or a command of it that failed.
    Scheduler,
    /// A build that did not finish: cancelled while waiting, or its upstream not complete.
    Build,
}

impl Error {
    /// Which kind of problem this is; an error wrapping another takes the outer one's class (an
    /// unreadable file under a dataset folder is the input's problem, not the store's).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Manifest(_)
            | Error::NoSuchInstance { .. }
            | Error::Fingerprint { .. }
            | Error::NotRegularFile { .. }
            | Error::NestedTooDeep { .. } => ErrorClass::Input,
            Error::Store { .. }
            | Error::ObjectStore { .. }
            | Error::Io { .. }
            | Error::Artifact { .. }
            | Error::StoreRuntime(_)
            | Error::NoConditionalDelete { .. }
            | Error::Request(_)
            | Error::Upload { .. } => ErrorClass::Store,
            Error::SlurmUnavailable { .. } | Error::SlurmFailed { .. } | Error::NoJobId { .. } => {
                ErrorClass::Scheduler
            }
            Error::CancelledWaiting { .. } | Error::UpstreamIncomplete { .. } => ErrorClass::Build,
        }
    }

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
