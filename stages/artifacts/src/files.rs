//! Names the artifacts of other stages are read by here. They are the same strings as the
//! constants of the stage declarations (`stages::encode`, `stages::ingest`, `stages::pretrain`,
//! `train::pretrain`); a test of `adaptor-torch` checks that they agree.

/// The encode stage kinds, whose write windows differ ([`crate::table::write_window`]).
pub const ENCODE_TEXT: &str = "encode-text";
pub const ENCODE_IMAGE: &str = "encode-image";

/// An `ingest` artifact's records table.
pub const RECORDS: &str = "records.parquet";

/// An encode artifact's pooled table, or its token table (`pooling = "tokens"`).
pub const EMBEDDINGS_FILE: &str = "embeddings.parquet";
pub const TOKENS_FILE: &str = "tokens.parquet";

/// A `train-adaptor` artifact's provenance (which backbones and tables it was trained on), its
/// training report and checkpoint description, and its training curve.
pub const PROVENANCE_FILE: &str = "provenance.json";
pub const PRETRAIN_REPORT: &str = "report.json";
pub const ADAPTOR_JSON: &str = "adaptor.json";
pub const TRAINING_CURVE: &str = "training_curve.png";

/// What `classify` and `segment` write ([`crate::report::EvalResult`] as JSON).
pub const RESULT_FILE: &str = "result.json";
