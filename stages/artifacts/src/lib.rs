//! The pipeline's artifact files that need no libtorch: Parquet embedding tables ([`table`]), the
//! merge of an encode stage's shards ([`merge`]), the `report` stage ([`report`]) and the plotting
//! scaffolding every PNG of the workspace shares ([`plot`]), the one Parquet writer every
//! stage's table goes through ([`portable`]: plain types pandas, polars and DuckDB read), and
//! numpy's legacy generator ([`numpy_random`]), which both the splits and the original's
//! pre-training order draw from, and row files ([`rowfile`]): scratch files of fixed-size rows
//! gathered by positioned reads, for tables larger than a stage's memory budget.
//!
//! The `adaptor` binary links this crate and runs `report` and the merge of encode shards in its
//! own process: neither starts the `adaptor-torch` worker, so neither pays libtorch's start-up.
//! The crate depends on `pipeline` only (not on `stages`), so that the stage declarations can
//! depend on it.

pub mod error;
pub mod files;
pub mod merge;
pub mod numpy_random;
pub mod plot;
pub mod portable;
pub mod report;
pub mod rowfile;
pub mod table;

pub use error::{Error, Result};
