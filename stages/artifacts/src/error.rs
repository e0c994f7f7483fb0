//! The error type of the artifacts crate: one enum whose variants carry the file, column, row or
//! shard at fault, because people read these messages in a stage log or on the terminal.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A Parquet file that cannot be opened, decoded or written.
    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },

    /// Arrow arrays that do not form a batch (lengths, types).
    #[error("{}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },

    /// A table's `adaptor.*` metadata entry that is missing or unreadable.
    #[error("{}: metadata `{}{key}`{message}", path.display(), crate::table::PREFIX)]
    Metadata {
        path: PathBuf,
        key: String,
        /// Starts with its own separator (`: ...` or ` = ...`).
        message: String,
    },

    /// A column that is absent, null or not of the type the table layout says.
    #[error("{}: {message}", path.display())]
    Column {
        path: PathBuf,
        column: String,
        message: String,
    },

    /// Rows whose counts do not add up (values per row, mask length, the metadata's row range).
    #[error("{}: {message}", path.display())]
    Rows { path: PathBuf, message: String },

    /// An embedding table whose rows are not the records table's rows (reference G.3).
    #[error("{}: not aligned with the records table: {message}", path.display())]
    Alignment { path: PathBuf, message: String },

    /// Shard tables that are not the n parts of one encoding.
    #[error("{}: {message}", path.display())]
    Shards { path: PathBuf, message: String },

    #[error("the shards cover rows 0..{covered} of {total}: a shard is missing")]
    ShardsMissing { covered: usize, total: usize },

    #[error("no embedding table given")]
    NoTables,

    /// A file read from a remote store whose bytes are not the ones its `_manifest.json`
    /// records (nothing read from it may be used).
    #[error("{}: {message}", path.display())]
    Remote { path: PathBuf, message: String },

    /// An artifact in the store that cannot be read.
    #[error("{}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: pipeline::Error,
    },

    /// An artifact in the store without its `_manifest.json`, or without the file asked for.
    #[error("{}: {message}", path.display())]
    NotInStore {
        path: PathBuf,
        message: &'static str,
    },

    /// The merge of one shard's artifact failed; `shard` is its instance (`enc[shard=1/3]`).
    #[error("{shard}: {source}")]
    Shard { shard: String, source: Box<Error> },

    /// One shard's artifact that does not fit the shards before it.
    #[error("{shard}: {message}")]
    ShardArtifact { shard: String, message: String },

    #[error("the {count} shards cover rows 0..{covered} of {total}: the last shard does not end the table")]
    ShardsShort {
        count: usize,
        covered: usize,
        total: usize,
    },

    #[error("{instance}: no shards to merge")]
    NoShards { instance: String },

    #[error("cannot merge shards of stage kind `{kind}`")]
    MergeKind { kind: String },

    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("{}: not an evaluation result: {source}", path.display())]
    NotAResult {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// plotters' drawing errors are generic over the backend; their text is what they carry.
    #[error("{}: {message}", path.display())]
    Plot { path: PathBuf, message: String },

    #[error("{}: {source}", path.display())]
    Png {
        path: PathBuf,
        source: png::EncodingError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn parquet(path: impl Into<PathBuf>) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let path = path.into();
        move |source| Error::Parquet { path, source }
    }

    pub fn arrow(path: impl Into<PathBuf>) -> impl FnOnce(arrow_schema::ArrowError) -> Self {
        let path = path.into();
        move |source| Error::Arrow { path, source }
    }

    pub fn column(
        path: impl Into<PathBuf>,
        column: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Column {
            path: path.into(),
            column: column.into(),
            message: message.into(),
        }
    }

    pub fn rows(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Rows {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn plot(path: impl Into<PathBuf>) -> impl Fn(&dyn std::fmt::Display) -> Self {
        let path = path.into();
        move |e| Error::Plot {
            path: path.clone(),
            message: e.to_string(),
        }
    }

    /// This error, as met while merging the shard `shard`.
    pub fn in_shard(self, shard: &str) -> Self {
        Error::Shard {
            shard: shard.to_string(),
            source: Box::new(self),
        }
    }
}
