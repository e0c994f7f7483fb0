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

    /// The adaptor (train's model, loss or checkpoint) failed; its own error names the
    /// file or tensor.
    #[error("adaptor: {0}")]
    Adaptor(#[from] train::Error),

    /// A named option that is none of the known ones (device, precision, pooling, backbone...).
    #[error("unknown {what} `{found}` ({choices})")]
    UnknownChoice {
        what: &'static str,
        found: String,
        choices: &'static str,
    },

    /// A parameter whose value cannot be used here: `image_size 60 is not a multiple of ...`.
    #[error("{name} {value} {reason}")]
    Parameter {
        name: &'static str,
        value: String,
        reason: String,
    },

    /// A tensor handed to a model that does not have the shape the model takes.
    #[error("{model} input must be {expected}, got {found}")]
    InputShape {
        model: &'static str,
        expected: String,
        found: String,
    },

    /// The tokenizer failed on a text (its message says why).
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Two inputs that would get the same key in an output table.
    #[error("{} and {} have the same file name; keys must be unique", first.display(), second.display())]
    DuplicateKey { first: PathBuf, second: PathBuf },

    /// What no stage input names, such as a thread pool that cannot start.
    #[error("{what}: {message}")]
    Runtime { what: String, message: String },

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

    /// [`Error::Parameter`].
    pub fn parameter(name: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        Error::Parameter {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// [`Error::UnknownChoice`].
    pub fn unknown(what: &'static str, found: impl Into<String>, choices: &'static str) -> Self {
        Error::UnknownChoice {
            what,
            found: found.into(),
            choices,
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
