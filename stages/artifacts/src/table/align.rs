//! Alignment with the records table: a table's keys must be the records' keys, in order, and the
//! shards of one encoding must cover every row once (read back as one table).

use std::path::{Path, PathBuf};

use super::{read_string_columns, EmbeddingTable};
use crate::error::{Error, Result};

impl EmbeddingTable {
    /// Checks that this table's keys are `records[row_start..row_end]`, in order.
    pub fn check_aligned(&self, records: &[String]) -> Result<()> {
        let m = &self.meta;
        if m.rows_total != records.len() {
            return Err(Error::Alignment {
                path: self.path.clone(),
                message: format!(
                    "it was built from a records table of {} rows; this one has {}",
                    m.rows_total,
                    records.len()
                ),
            });
        }
        let want = &records[m.row_start.min(records.len())..m.row_end.min(records.len())];
        if let Some(i) =
            (0..self.keys.len().max(want.len())).find(|&i| self.keys.get(i) != want.get(i))
        {
            let show =
                |k: Option<&String>| k.map_or("nothing".to_string(), |k| format!("key `{k}`"));
            return Err(Error::Alignment {
                path: self.path.clone(),
                message: format!(
                    "row {} has {} where the records table has {}",
                    m.row_start + i,
                    show(self.keys.get(i)),
                    show(want.get(i))
                ),
            });
        }
        Ok(())
    }

    /// Reads the shards of one table (any order), checks that they are the n shards of the same
    /// encoding and cover every row once, and concatenates them in row order.
    pub fn read_shards(paths: &[PathBuf]) -> Result<Self> {
        let mut parts = paths
            .iter()
            .map(|p| Self::read(p))
            .collect::<Result<Vec<_>>>()?;
        let first = parts.first().ok_or(Error::NoTables)?;
        let same = |t: &EmbeddingTable| {
            let (a, b) = (&t.meta, &first.meta);
            (
                &a.table,
                &a.backbone,
                &a.backbone_kind,
                a.dim,
                a.tokens,
                &a.pooling,
                &a.preprocessing,
                &a.precision,
                a.rows_total,
            ) == (
                &b.table,
                &b.backbone,
                &b.backbone_kind,
                b.dim,
                b.tokens,
                &b.pooling,
                &b.preprocessing,
                &b.precision,
                b.rows_total,
            )
        };
        if let Some(bad) = parts.iter().find(|t| !same(t)) {
            return Err(Error::Shards {
                path: bad.path.clone(),
                message: format!(
                    "not a shard of the same encoding as {}",
                    first.path.display()
                ),
            });
        }
        parts.sort_by_key(|t| t.meta.row_start);
        let mut next = 0;
        for t in &parts {
            if t.meta.row_start != next {
                return Err(Error::Shards {
                    path: t.path.clone(),
                    message: format!(
                        "shard {} starts at row {}, expected {next} (a shard is missing or repeated)",
                        t.meta.shard, t.meta.row_start
                    ),
                });
            }
            next = t.meta.row_end;
        }
        let total = parts[0].meta.rows_total;
        if next != total {
            return Err(Error::ShardsMissing {
                covered: next,
                total,
            });
        }
        let mut it = parts.into_iter();
        let mut all = it.next().expect("non-empty");
        for t in it {
            all.keys.extend(t.keys);
            if let (Some(a), Some(b)) = (all.splits.as_mut(), t.splits) {
                a.extend(b);
            }
            all.values.extend(t.values);
            if let (Some(a), Some(b)) = (all.mask.as_mut(), t.mask) {
                a.extend(b);
            }
        }
        all.meta.row_start = 0;
        all.meta.row_end = total;
        all.meta.shard = "0/1".into();
        Ok(all)
    }
}

/// Reads a whole table (one file, or all its shards) and checks it against the keys of
/// `records` (`records.parquet`).
pub fn read_aligned(tables: &[PathBuf], records: &Path) -> Result<EmbeddingTable> {
    let t = if tables.len() == 1 {
        EmbeddingTable::read(&tables[0])?
    } else {
        EmbeddingTable::read_shards(tables)?
    };
    if t.meta.row_start != 0 || t.meta.row_end != t.meta.rows_total {
        return Err(Error::Alignment {
            path: t.path.clone(),
            message: format!(
                "it holds rows {}..{} of {} (shard {}); pass all the shards",
                t.meta.row_start, t.meta.row_end, t.meta.rows_total, t.meta.shard
            ),
        });
    }
    let keys = read_string_columns(records, &["key"])?.remove(0);
    t.check_aligned(&keys)?;
    Ok(t)
}
