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

    /// A plot or table the shared artifacts code could not draw or write (the error names the
    /// file, and the column for a table).
    #[error(transparent)]
    Artifact(#[from] artifacts::Error),

    /// Training diverged: the loss of an update is NaN or infinite.
    #[error("training loss is {loss} at step {step} (epoch {epoch})")]
    NonFiniteLoss { loss: f64, step: u64, epoch: usize },

    /// A tensor given to a model or data source that does not have the shape it takes.
    #[error("{what} has shape {found}, expected {expected}")]
    InputShape {
        what: String,
        found: String,
        expected: String,
    },

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An image input that is neither pooled `[B, D]` nor tokens `[B, L, D]`.
    pub(crate) fn image_rank(x: &tch::Tensor) -> Error {
        Error::InputShape {
            what: "image input".into(),
            found: format!("{:?}", x.size()),
            expected: "2 or 3 dimensions ([B, D] or [B, L, D])".into(),
        }
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
