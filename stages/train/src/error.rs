//! The error type of the training crate. Messages name the file, tensor or parameter at fault,
//! because people read them in a stage log.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A configuration value that cannot be used (the message names the field).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Input data that does not fit the model (shapes, dtypes, row counts).
    #[error("invalid data: {0}")]
    Data(String),

    /// A checkpoint or resume file that does not match the model or run.
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("{}: {message}", path.display())]
    Output { path: PathBuf, message: String },

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
