//! `encode-text`: a records table's texts through a frozen BERT-family backbone into an embedding
//! table (`adaptor_torch::encode::encode_text` in the worker).

use pipeline::{InputAccepts, InputSpec};

use super::params::int_in;
use super::StageKind;
use crate::encode::{EncodeRun, ENCODE_TEXT, SHARDING};

crate::choice! {
    /// How a text becomes one vector (or a token table).
    pub enum TextPooling { Pooler = "pooler", Cls = "cls", Mean = "mean", Tokens = "tokens" }
}

#[allow(clippy::ptr_arg)] // a field check takes `&FieldType`
fn not_empty(s: &String) -> Result<(), String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    }
}

crate::stage_params! {
    /// The parameters of `encode-text`.
    pub struct EncodeTextParams {
        pooling: TextPooling = TextPooling::Pooler;
            "pooler (the original's pooler_output), cls, masked mean, or tokens (last layer, \
             written to tokens.parquet)",
        max_length: i64 = 112, check int_in(2, 8192);
            "tokens per text, [CLS] and [SEP] included; longer texts are truncated (the original: 112)",
        text_column: String = "caption".into(), check not_empty; "the records table's column holding the text",
    }
    with run: EncodeRun = EncodeRun::DEFAULT;
}

pub struct EncodeText;

impl StageKind for EncodeText {
    const KIND: &'static str = ENCODE_TEXT;
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "Encodes a records table's texts with a frozen BERT-family backbone into an embedding table";
    const SHARDING: Option<pipeline::Sharding> = Some(SHARDING);
    type Params = EncodeTextParams;

    fn inputs() -> Vec<InputSpec> {
        vec![
            InputSpec::one(
                "records",
                InputAccepts::Stage(&["ingest"]),
                "the records table (its text column)",
            ),
            InputSpec::one(
                "backbone",
                InputAccepts::Backbone,
                "a BERT-family folder (kind bert)",
            ),
        ]
    }
}

/// Joins the shard tables into the table an unsharded run writes, in this process (tables only).
pub fn merge(
    p: &EncodeTextParams,
    ctx: &pipeline::StageContext,
) -> Result<(), pipeline::StageError> {
    artifacts::merge::merge_tables(ENCODE_TEXT, p.run.batch_size, ctx)
}
