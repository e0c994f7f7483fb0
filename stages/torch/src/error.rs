//! The error type of the torch crate. Messages name the file, tensor, row or column at fault,
//! because people read them (in a stage log, or on the terminal of `adaptor embed`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A backbone file (config, tokenizer, weights, checkpoint) that cannot be used as it is.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    #[error("{file}: tensor `{name}` is missing (expected shape {expected})")]
    MissingTensor {
        file: String,
        name: String,
        expected: String,
    },

    #[error("{file}: tensor `{name}` has shape {found}, expected {expected}")]
    TensorShape {
        file: String,
        name: String,
        found: String,
        expected: String,
    },

    #[error("{}: unknown model_type `{found}` (supported: {supported})", path.display())]
    UnknownModelType {
        path: PathBuf,
        found: String,
        supported: String,
    },

    /// Image decoding (the message names the file).
    #[error(transparent)]
    Image(#[from] stages::Error),

    #[error("{}: {message}", path.display())]
    Table { path: PathBuf, message: String },

    /// The embedding tables, the report, the plots (the `artifacts` crate; names file and column).
    #[error(transparent)]
    Artifacts(#[from] artifacts::Error),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    #[error("{0}")]
    Invalid(String),

    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn table(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Error::Table {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// `[2, 3]`: shapes as PyTorch prints them, in messages.
pub fn shape_str(shape: &[i64]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}
