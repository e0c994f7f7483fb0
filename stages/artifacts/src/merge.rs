//! The merge of a sharded encode (`shards = N` in a manifest): the N shard tables, concatenated in
//! shard order, written again as the one table an unsharded run writes.
//!
//! The rows are written in the same windows as the encode loops write them (from row 0, see
//! [`write_window`]), with the unsharded metadata (`shard` 0/1, rows 0..total), so the file is
//! byte-identical to the unsharded one whenever the shards' vectors are (ARCHITECTURE.md).
//!
//! No libtorch: the `adaptor` binary runs the merge in its own process ([`merge_tables`], called by
//! the encode kinds' registry entries in `stages::kinds`).

use std::path::PathBuf;

use pipeline::{StageContext, StageError, SHARDS_SLOT};

use crate::error::Error;
use crate::files::{EMBEDDINGS_FILE, ENCODE_IMAGE, ENCODE_TEXT, RECORDS, TOKENS_FILE};
use crate::table::{
    open_stream, read_string_columns, write_window, EmbeddingTable, EmbeddingWriter, RowBatch,
    TableMeta,
};

/// One streamed batch of a shard as a table of its own rows (row range within the whole table),
/// so that the alignment check and the windows work on it as on a whole shard.
fn batch_table(path: &std::path::Path, meta: &TableMeta, b: RowBatch) -> EmbeddingTable {
    let row_start = meta.row_start + b.first_row;
    EmbeddingTable {
        path: path.to_path_buf(),
        meta: TableMeta {
            row_start,
            row_end: row_start + b.keys.len(),
            ..meta.clone()
        },
        keys: b.keys,
        splits: b.splits,
        values: b.values,
        mask: b.mask,
    }
}

/// The `shard` label of the whole table (`WHOLE` of the declarations).
const WHOLE: &str = "0/1";

/// The first metadata field in which `t` differs from `first`, as `field: a vs b`.
fn differs(t: &TableMeta, first: &TableMeta) -> Option<String> {
    let fields = [
        ("table", t.table.clone(), first.table.clone()),
        ("backbone", t.backbone.clone(), first.backbone.clone()),
        (
            "backbone kind",
            t.backbone_kind.clone(),
            first.backbone_kind.clone(),
        ),
        ("dimension", t.dim.to_string(), first.dim.to_string()),
        (
            "token positions",
            format!("{:?}", t.tokens),
            format!("{:?}", first.tokens),
        ),
        ("pooling", t.pooling.clone(), first.pooling.clone()),
        (
            "preprocessing",
            t.preprocessing.clone(),
            first.preprocessing.clone(),
        ),
        ("precision", t.precision.clone(), first.precision.clone()),
        (
            "records rows",
            t.rows_total.to_string(),
            first.rows_total.to_string(),
        ),
    ];
    fields
        .into_iter()
        .find(|(_, a, b)| a != b)
        .map(|(f, a, b)| format!("{f} `{a}` where shard 0 has `{b}`"))
}

/// Rows waiting for a full write window.
struct Carry {
    keys: Vec<String>,
    splits: Option<Vec<String>>,
    values: Vec<f32>,
    mask: Option<Vec<bool>>,
}

impl Carry {
    fn take(&mut self, t: &EmbeddingTable, rows: std::ops::Range<usize>) {
        let (n, l) = (t.row_len(), t.meta.tokens.unwrap_or(0));
        self.keys.extend_from_slice(&t.keys[rows.clone()]);
        if let (Some(a), Some(b)) = (self.splits.as_mut(), t.splits.as_ref()) {
            a.extend_from_slice(&b[rows.clone()]);
        }
        self.values
            .extend_from_slice(&t.values[rows.start * n..rows.end * n]);
        if let (Some(a), Some(b)) = (self.mask.as_mut(), t.mask.as_ref()) {
            a.extend_from_slice(&b[rows.start * l..rows.end * l]);
        }
    }

    fn write(&mut self, w: &mut EmbeddingWriter) -> Result<(), StageError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        w.write(
            &std::mem::take(&mut self.keys),
            self.splits.as_mut().map(std::mem::take).as_deref(),
            std::mem::take(&mut self.values),
            self.mask.as_mut().map(std::mem::take),
        )?;
        Ok(())
    }
}

/// Merges the shards of an instance of the encode stage `kind` (`encode-text` or `encode-image`,
/// whose write windows differ) into `ctx.out_dir()`; `batch_size` is the instance's parameter.
pub fn merge_tables(kind: &str, batch_size: i64, ctx: &StageContext) -> Result<(), StageError> {
    if kind != ENCODE_TEXT && kind != ENCODE_IMAGE {
        return Err(Error::MergeKind {
            kind: kind.to_string(),
        }
        .into());
    }
    let shards = ctx.inputs(SHARDS_SLOT);
    let n = shards.len();
    if n == 0 {
        return Err(Error::NoShards {
            instance: ctx.instance().to_string(),
        }
        .into());
    }
    let records =
        read_string_columns(&ctx.input("records")?.path.join(RECORDS), &["key"])?.remove(0);
    let batch_size = batch_size.max(1) as usize;
    // Which table the shards hold: tokens.parquet for `pooling = "tokens"`, else embeddings.parquet.
    let file = if shards[0].path.join(TOKENS_FILE).is_file() {
        TOKENS_FILE
    } else {
        EMBEDDINGS_FILE
    };
    let mut writer: Option<(EmbeddingWriter, TableMeta, usize)> = None;
    let mut carry: Option<Carry> = None;
    let mut next = 0usize;
    for (i, artifact) in shards.iter().enumerate() {
        ctx.check_cancelled()?;
        let name = artifact.name().to_string();
        let unfit = |message: String| Error::ShardArtifact {
            shard: name.clone(),
            message,
        };
        let path: PathBuf = artifact.path.join(file);
        if !path.is_file() {
            return Err(unfit(format!("its artifact has no {file} (shard 0 has one)")).into());
        }
        // Streamed in batches within the stage's memory budget: one batch of one shard at a time.
        let stream = open_stream(&path, ctx.memory()).map_err(|e| e.in_shard(&name))?;
        let meta = stream.meta().clone();
        let want = format!("{i}/{n}");
        if meta.shard != want {
            return Err(unfit(format!(
                "its table {} says shard {}, expected {want}",
                path.display(),
                meta.shard
            ))
            .into());
        }
        if meta.row_start != next {
            return Err(unfit(format!(
                "its table {} starts at row {}, but the shards before it end at row {next}",
                path.display(),
                meta.row_start
            ))
            .into());
        }
        next = meta.row_end;
        let mut parts = stream.map(|b| b.map(|b| batch_table(&path, &meta, b)));
        let mut first_part = parts.next();
        if first_part.is_none() {
            // An empty shard: its (empty) rows still go through the checks below.
            first_part = Some(Ok(batch_table(
                &path,
                &meta,
                RowBatch {
                    first_row: 0,
                    keys: Vec::new(),
                    splits: None,
                    values: Vec::new(),
                    mask: meta.tokens.map(|_| Vec::new()),
                },
            )));
        }
        for t in first_part.into_iter().chain(parts) {
            let t = t.map_err(|e| e.in_shard(&name))?;
            t.check_aligned(&records).map_err(|e| e.in_shard(&name))?;
            if writer.is_none() {
                let meta = TableMeta {
                    shard: WHOLE.to_string(),
                    row_start: 0,
                    row_end: t.meta.rows_total,
                    ..t.meta.clone()
                };
                let window = write_window(kind, batch_size, t.meta.tokens.is_some());
                let w =
                    EmbeddingWriter::create(&ctx.out_dir().join(file), &meta, t.splits.is_some())?;
                carry = Some(Carry {
                    keys: Vec::new(),
                    splits: t.splits.as_ref().map(|_| Vec::new()),
                    values: Vec::new(),
                    mask: t.mask.as_ref().map(|_| Vec::new()),
                });
                writer = Some((w, t.meta.clone(), window));
            }
            let (w, first, window) = writer.as_mut().expect("created above");
            if let Some(d) = differs(&t.meta, first) {
                return Err(unfit(format!("not a shard of the same encoding: {d}")).into());
            }
            if t.splits.is_some() != carry.as_ref().is_some_and(|c| c.splits.is_some()) {
                return Err(unfit(
                    "a `split` column where shard 0 has none, or none where it has one".into(),
                )
                .into());
            }
            // Rows go out in windows counted from row 0 of the whole table, as an unsharded run writes them.
            let c = carry.as_mut().expect("created with the writer");
            let rows = t.rows();
            let mut at = 0;
            if !c.keys.is_empty() {
                let take = (*window - c.keys.len()).min(rows);
                c.take(&t, 0..take);
                at = take;
                if c.keys.len() == *window {
                    c.write(w)?;
                }
            }
            while rows - at >= *window {
                c.take(&t, at..at + *window);
                c.write(w)?;
                at += *window;
            }
            c.take(&t, at..rows);
        }
        ctx.log(format!(
            "{name}: rows {}..{} of {}",
            meta.row_start, meta.row_end, meta.rows_total
        ));
    }
    let (mut w, first, _) = writer.expect("at least one shard");
    if next != first.rows_total {
        return Err(Error::ShardsShort {
            count: n,
            covered: next,
            total: first.rows_total,
        }
        .into());
    }
    carry.as_mut().expect("created").write(&mut w)?;
    let rows = w.finish()?;
    ctx.log(format!("merged {n} shards: wrote {rows} rows to {file}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use arrow_array::{RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use pipeline::{InputArtifact, InputOrigin, NoProgress, Params, StageKey, Value};

    use super::*;

    /// Shard `i` of `n` (0-based), as `shard = "i/n"` says.
    type Shard = (usize, usize);
    const WHOLE: Shard = (0, 1);

    const ROWS: usize = 23;
    const DIM: usize = 3;

    fn keys() -> Vec<String> {
        (0..ROWS).map(|i| format!("k{i:02}")).collect()
    }

    fn meta((i, n): Shard) -> TableMeta {
        // `Shard::range` of the declarations: contiguous, in order, every row once.
        let r = ROWS * i / n..ROWS * (i + 1) / n;
        TableMeta {
            table: "embeddings".into(),
            backbone: "b".into(),
            backbone_kind: "bert".into(),
            dim: DIM,
            tokens: None,
            pooling: "mean".into(),
            preprocessing: "{}".into(),
            precision: "fp32".into(),
            shard: format!("{i}/{n}"),
            row_start: r.start,
            row_end: r.end,
            rows_total: ROWS,
        }
    }

    /// What an encode loop writes for `shard`: rows in windows of `window` from its first row.
    fn write_table(dir: &Path, shard: Shard, window: usize) {
        std::fs::create_dir_all(dir).unwrap();
        let m = meta(shard);
        let mut w = EmbeddingWriter::create(&dir.join(EMBEDDINGS_FILE), &m, true).unwrap();
        let keys = keys();
        let mut at = m.row_start;
        while at < m.row_end {
            let end = (at + window).min(m.row_end);
            let splits: Vec<String> = (at..end)
                .map(|i| ["train", "valid"][i % 2].into())
                .collect();
            let values: Vec<f32> = (at * DIM..end * DIM).map(|v| v as f32 * 0.5).collect();
            w.write(&keys[at..end], Some(&splits), values, None)
                .unwrap();
            at = end;
        }
        w.finish().unwrap();
    }

    fn records(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from_iter_values(keys()))],
        )
        .unwrap();
        let f = std::fs::File::create(dir.join(RECORDS)).unwrap();
        let mut w = ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn merge(dir: &Path, shards: &[&Path], out: &Path) -> Result<(), String> {
        merge_within(dir, shards, out, pipeline::stage::DEFAULT_MEMORY)
    }

    /// [`merge`] under a memory budget of `memory` bytes (its batches: budget / 8 / row bytes).
    fn merge_within(dir: &Path, shards: &[&Path], out: &Path, memory: u64) -> Result<(), String> {
        let stage = |p: &Path, i: usize| InputArtifact {
            path: p.to_path_buf(),
            origin: InputOrigin::Stage {
                kind: "encode-text".into(),
                instance: format!("enc[shard={i}/{}]", shards.len()),
                key: StageKey::parse(&"a".repeat(64)).unwrap(),
            },
        };
        let mut inputs = BTreeMap::new();
        inputs.insert("records".to_string(), vec![stage(&dir.join("records"), 0)]);
        inputs.insert(
            SHARDS_SLOT.to_string(),
            shards
                .iter()
                .enumerate()
                .map(|(i, p)| stage(p, i))
                .collect(),
        );
        let mut params = Params::new();
        params.insert("batch_size".into(), Value::Int(2));
        std::fs::create_dir_all(out).unwrap();
        let ctx = StageContext::new(
            "enc".into(),
            StageKey::parse(&"b".repeat(64)).unwrap(),
            params,
            inputs,
            out.to_path_buf(),
            1,
            None,
            Arc::new(NoProgress),
            Arc::new(AtomicBool::new(false)),
        )
        .with_memory(memory);
        merge_tables(ENCODE_TEXT, 2, &ctx).map_err(|e| e.to_string())
    }

    #[test]
    fn merged_shards_are_the_unsharded_file_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        records(&dir.join("records"));
        let window = write_window(ENCODE_TEXT, 2, false);
        assert_eq!(window, 32, "batch_size 2 writes 16 batches at a time");
        write_table(&dir.join("whole"), WHOLE, window);
        // 23 rows in 3 shards of 7, 8, 8: no shard boundary on a window boundary.
        let parts: Vec<_> = (0..3)
            .map(|i| {
                let p = dir.join(format!("s{i}"));
                write_table(&p, (i, 3), window);
                p
            })
            .collect();
        merge(dir, &[&parts[0], &parts[1], &parts[2]], &dir.join("out")).unwrap();
        assert_eq!(
            std::fs::read(dir.join("out").join(EMBEDDINGS_FILE)).unwrap(),
            std::fs::read(dir.join("whole").join(EMBEDDINGS_FILE)).unwrap()
        );
        // Streamed a few rows at a time (batches never on a window or shard boundary): the same.
        let row_bytes = (DIM * 4) as u64;
        merge_within(
            dir,
            &[&parts[0], &parts[1], &parts[2]],
            &dir.join("few"),
            8 * 3 * row_bytes,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(dir.join("few").join(EMBEDDINGS_FILE)).unwrap(),
            std::fs::read(dir.join("whole").join(EMBEDDINGS_FILE)).unwrap()
        );
        let t = EmbeddingTable::read(&dir.join("out").join(EMBEDDINGS_FILE)).unwrap();
        assert_eq!(t.meta, meta(WHOLE));
        assert_eq!(t.keys, keys());

        // Out of order, missing, or from another encoding: refused, naming the shard.
        let err = merge(dir, &[&parts[1], &parts[0], &parts[2]], &dir.join("o2")).unwrap_err();
        assert!(
            err.starts_with("enc[shard=0/3]: its table")
                && err.contains("says shard 1/3, expected 0/3"),
            "{err}"
        );
        let err = merge(dir, &[&parts[0], &parts[1]], &dir.join("o3")).unwrap_err();
        assert!(err.contains("says shard 0/3, expected 0/2"), "{err}");
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let mut m = meta((1, 3));
        m.pooling = "cls".into();
        let mut w = EmbeddingWriter::create(&other.join(EMBEDDINGS_FILE), &m, true).unwrap();
        let r = m.row_start..m.row_end;
        let splits: Vec<String> = r.clone().map(|_| "train".to_string()).collect();
        w.write(
            &keys()[r.clone()],
            Some(&splits),
            vec![0.0; r.len() * DIM],
            None,
        )
        .unwrap();
        w.finish().unwrap();
        let err = merge(dir, &[&parts[0], &other, &parts[2]], &dir.join("o4")).unwrap_err();
        assert_eq!(
            err,
            "enc[shard=1/3]: not a shard of the same encoding: pooling `cls` where shard 0 has `mean`"
        );
    }
}
