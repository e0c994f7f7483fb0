//! `results.parquet`: one row per (instance, split, metric), for pandas, polars or DuckDB.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use super::EvalResult;
use crate::error::{Error, Result};
use crate::portable::write_table;

/// One row of `results.parquet`: (result, split, metric, value).
type Row<'a> = (&'a EvalResult, &'a str, &'a str, f64);

/// `results.parquet`: one row per (instance, split, metric).
pub fn write_parquet(path: &Path, results: &[EvalResult]) -> Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for r in results {
        for (split, m) in [("valid", &r.valid), ("test", &r.test)] {
            for (name, v) in m {
                rows.push((r, split, name, *v));
            }
        }
    }
    let s = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("instance", s(&|r| r.0.instance.clone())),
        ("task", s(&|r| r.0.task.clone())),
        ("dataset", s(&|r| r.0.dataset.clone())),
        ("head", s(&|r| r.0.head.clone())),
        ("vision", s(&|r| r.0.vision.clone())),
        ("text", s(&|r| r.0.text.clone())),
        ("adaptor", s(&|r| r.0.adaptor.clone())),
        (
            "fraction",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.0.fraction).collect::<Vec<_>>(),
            )),
        ),
        (
            "seed",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0.seed).collect::<Vec<_>>(),
            )),
        ),
        ("split", s(&|r| r.1.to_string())),
        ("metric", s(&|r| r.2.to_string())),
        (
            "value",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
        (
            "best_epoch",
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|r| r.0.best_epoch as i64)
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "train_examples",
            Arc::new(Int64Array::from(
                rows.iter()
                    .map(|r| r.0.train_examples as i64)
                    .collect::<Vec<_>>(),
            )),
        ),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    debug_assert!(schema
        .fields()
        .iter()
        .all(|f| f.data_type() != &DataType::Null));
    let batch = RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect())
        .map_err(Error::arrow(path))?;
    write_table(path, &batch, None)
}
