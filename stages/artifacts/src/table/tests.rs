//! The table layer's tests: round trips, alignment, shards, the store, and malformed files.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::*;

fn meta(rows: (usize, usize, usize), tokens: Option<usize>) -> TableMeta {
    TableMeta {
        table: if tokens.is_some() {
            "tokens"
        } else {
            "embeddings"
        }
        .into(),
        backbone: "b".into(),
        backbone_kind: "bert".into(),
        dim: 2,
        tokens,
        pooling: "mean".into(),
        preprocessing: "{}".into(),
        precision: "fp32".into(),
        shard: "0/1".into(),
        row_start: rows.0,
        row_end: rows.1,
        rows_total: rows.2,
    }
}

fn keys(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pooled_and_token_tables_round_trip_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.parquet");
    let mut w = EmbeddingWriter::create(&p, &meta((0, 3, 3), None), true).unwrap();
    w.write(
        &keys(&["a", "b"]),
        Some(&keys(&["train", "valid"])),
        vec![1.0, 2.0, 3.0, -0.0],
        None,
    )
    .unwrap();
    w.write(
        &keys(&["c"]),
        Some(&keys(&["train"])),
        vec![f32::MIN_POSITIVE, 5.5],
        None,
    )
    .unwrap();
    assert_eq!(w.finish().unwrap(), 3);
    let t = EmbeddingTable::read(&p).unwrap();
    assert_eq!(t.meta, meta((0, 3, 3), None));
    assert_eq!(t.keys, keys(&["a", "b", "c"]));
    assert_eq!(
        t.splits.as_deref(),
        Some(&keys(&["train", "valid", "train"])[..])
    );
    assert_eq!(t.row(2), &[f32::MIN_POSITIVE, 5.5]);
    assert_eq!(t.row(1)[1].to_bits(), (-0.0f32).to_bits());

    let p = dir.path().join("t.parquet");
    let mut w = EmbeddingWriter::create(&p, &meta((0, 1, 1), Some(3)), false).unwrap();
    w.write(
        &keys(&["a"]),
        None,
        vec![1., 2., 3., 4., 0., 0.],
        Some(vec![true, true, false]),
    )
    .unwrap();
    w.finish().unwrap();
    let t = EmbeddingTable::read(&p).unwrap();
    assert_eq!(t.values, [1., 2., 3., 4., 0., 0.]);
    assert_eq!(t.mask, Some(vec![true, true, false]));
    assert!(t.splits.is_none());
}

#[test]
fn misaligned_tables_are_refused_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.parquet");
    let mut w = EmbeddingWriter::create(&p, &meta((0, 3, 3), None), false).unwrap();
    w.write(&keys(&["a", "c", "b"]), None, vec![0.0; 6], None)
        .unwrap();
    w.finish().unwrap();
    let t = EmbeddingTable::read(&p).unwrap();
    let err = t
        .check_aligned(&keys(&["a", "b", "c"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("not aligned with the records table: row 1 has key `c` where the records table has key `b`"),
        "{err}"
    );
    let err = t.check_aligned(&keys(&["a", "b"])).unwrap_err().to_string();
    assert!(
        err.contains("built from a records table of 3 rows; this one has 2"),
        "{err}"
    );
}

#[test]
fn shards_concatenate_in_row_order_and_gaps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, start: usize, end: usize, ks: &[&str]| {
        let p = dir.path().join(name);
        let mut m = meta((start, end, 3), None);
        m.shard = format!("{start}");
        let mut w = EmbeddingWriter::create(&p, &m, false).unwrap();
        w.write(&keys(ks), None, vec![start as f32; 2 * ks.len()], None)
            .unwrap();
        w.finish().unwrap();
        p
    };
    let b = write("b.parquet", 1, 3, &["y", "z"]);
    let a = write("a.parquet", 0, 1, &["x"]);
    let t = EmbeddingTable::read_shards(&[b.clone(), a]).unwrap();
    assert_eq!(t.keys, keys(&["x", "y", "z"]));
    t.check_aligned(&keys(&["x", "y", "z"])).unwrap();
    let err = EmbeddingTable::read_shards(&[b]).unwrap_err().to_string();
    assert!(err.contains("starts at row 1, expected 0"), "{err}");
}
#[test]
fn tables_are_read_through_the_store_only_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.parquet");
    let mut w = EmbeddingWriter::create(&p, &meta((0, 1, 1), None), false).unwrap();
    w.write(&keys(&["a"]), None, vec![1.0, 2.0], None).unwrap();
    w.finish().unwrap();
    let store = pipeline::Store::open(&pipeline::StoreUrl::Memory, &Default::default(), dir.path())
        .unwrap();
    let key = pipeline::StageKey::parse(&"d".repeat(64)).unwrap();
    let dir_rel = pipeline::Store::artifact_dir("encode-text", &key);
    let bytes = bytes::Bytes::from(std::fs::read(&p).unwrap());
    store
        .put(&format!("{dir_rel}/embeddings.parquet"), bytes, false)
        .unwrap();
    let err = EmbeddingTable::read_from_store(&store, "encode-text", &key, "embeddings.parquet")
        .unwrap_err();
    assert!(err.to_string().contains("not complete"), "{err}");
    store
        .put(
            &pipeline::Store::manifest_path("encode-text", &key),
            bytes::Bytes::from_static(b"{}"),
            false,
        )
        .unwrap();
    let t =
        EmbeddingTable::read_from_store(&store, "encode-text", &key, "embeddings.parquet").unwrap();
    assert_eq!((t.keys, t.values), (keys(&["a"]), vec![1.0, 2.0]));
}

/// Writes arbitrary columns with the metadata of `m` (dim and tokens overridable as text).
fn write_raw(path: &Path, m: &TableMeta, over: &[(&str, &str)], cols: Vec<(&str, ArrayRef)>) {
    let mut kv = m.to_kv();
    for (k, v) in over {
        let key = format!("{PREFIX}{k}");
        kv.retain(|e| e.key != key);
        kv.push(KeyValue::new(key, v.to_string()));
    }
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch =
        RecordBatch::try_new(schema.clone(), cols.into_iter().map(|(_, a)| a).collect()).unwrap();
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(kv))
        .build();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn fixed(values: ArrayRef, n: i32) -> ArrayRef {
    let item = Arc::new(Field::new("item", values.data_type().clone(), true));
    Arc::new(FixedSizeListArray::try_new(item, n, values, None).unwrap())
}

#[test]
fn parquet_inputs_of_the_wrong_type_or_shape_are_errors_naming_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.parquet");
    let key: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
    let read_err = |p: &Path| EmbeddingTable::read(p).unwrap_err().to_string();
    let named = |e: &str, col: &str| {
        assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
        assert!(e.contains(&format!("`{col}`")), "{e}");
    };
    // embedding holding integers
    let ints: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1, 2]));
    write_raw(
        &p,
        &meta((0, 1, 1), None),
        &[],
        vec![("key", key.clone()), ("embedding", fixed(ints, 2))],
    );
    named(&read_err(&p), "embedding");
    // embedding of the wrong width
    let f3: ArrayRef = Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0]));
    write_raw(
        &p,
        &meta((0, 1, 1), None),
        &[],
        vec![("key", key.clone()), ("embedding", fixed(f3.clone(), 3))],
    );
    named(&read_err(&p), "embedding");
    // key holding integers
    let f2: ArrayRef = Arc::new(Float32Array::from(vec![1.0, 2.0]));
    let int_key: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![7]));
    write_raw(
        &p,
        &meta((0, 1, 1), None),
        &[],
        vec![("key", int_key), ("embedding", fixed(f2.clone(), 2))],
    );
    named(&read_err(&p), "key");
    // a token table whose mask holds floats (this used to panic in `as_boolean`)
    let tokens = fixed(fixed(Arc::new(Float32Array::from(vec![0.0; 6])), 2), 3);
    let float_mask = fixed(Arc::new(Float32Array::from(vec![1.0, 1.0, 0.0])), 3);
    write_raw(
        &p,
        &meta((0, 1, 1), Some(3)),
        &[],
        vec![
            ("key", key.clone()),
            ("tokens", tokens.clone()),
            ("mask", float_mask),
        ],
    );
    named(&read_err(&p), "mask");
    // tokens shaped 2 × 3 where the metadata says 3 × 2
    let wrong = fixed(fixed(Arc::new(Float32Array::from(vec![0.0; 6])), 3), 2);
    let mask = fixed(Arc::new(BooleanArray::from(vec![true, true, false])), 3);
    write_raw(
        &p,
        &meta((0, 1, 1), Some(3)),
        &[],
        vec![("key", key.clone()), ("tokens", wrong), ("mask", mask)],
    );
    named(&read_err(&p), "tokens");
    // null rows
    let null_key: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
    write_raw(
        &p,
        &meta((0, 1, 1), None),
        &[],
        vec![("key", null_key), ("embedding", fixed(f2.clone(), 2))],
    );
    named(&read_err(&p), "key");
    // metadata a reader would compute with: a dimension that overflows, rows backwards
    write_raw(
        &p,
        &meta((0, 1, 1), Some(3)),
        &[("dim", &usize::MAX.to_string())],
        vec![
            ("key", key.clone()),
            ("tokens", tokens),
            (
                "mask",
                fixed(Arc::new(BooleanArray::from(vec![true; 3])), 3),
            ),
        ],
    );
    let e = read_err(&p);
    assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
    write_raw(
        &p,
        &meta((0, 1, 1), None),
        &[("rows", "5..2 of 9")],
        vec![("key", key.clone()), ("embedding", fixed(f2, 2))],
    );
    let e = read_err(&p);
    assert!(e.contains("metadata `adaptor.rows` = `5..2 of 9`"), "{e}");
    // a records table whose `key` column holds integers
    let int_key: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![7]));
    write_raw(&p, &meta((0, 1, 1), None), &[], vec![("key", int_key)]);
    let e = read_string_columns(&p, &["key"]).unwrap_err().to_string();
    named(&e, "key");
}

/// A records-like table of `rows` rows (`key` = `k{i}`, `path` = `p{i}`) in row groups of
/// `group` rows, written by arrow-rs in batches of 7 rows.
fn string_table(path: &Path, rows: usize, group: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", arrow_schema::DataType::Utf8, false),
        Field::new("split", arrow_schema::DataType::LargeUtf8, false),
        Field::new("path", arrow_schema::DataType::Utf8, false),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let mut w =
        ArrowWriter::try_new(File::create(path).unwrap(), schema.clone(), Some(props)).unwrap();
    for s in (0..rows).step_by(7) {
        let r = s..(s + 7).min(rows);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                r.clone().map(|i| format!("k{i}")),
            )),
            Arc::new(arrow_array::LargeStringArray::from_iter_values(
                r.clone().map(|i| ["train", "test"][i % 2]),
            )),
            Arc::new(StringArray::from_iter_values(r.map(|i| format!("p{i}")))),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
    }
    w.close().unwrap();
}

#[test]
fn string_batches_are_exact_and_a_range_reads_only_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("records.parquet");
    string_table(&p, 100, 16);
    assert_eq!(row_count(&p).unwrap(), 100);
    // Every row, in batches of 10 across row groups of 16.
    let all: Vec<Vec<Vec<String>>> = StringBatches::open(&p, &["path", "key"], None, 10)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|b| b[0].len() == 10 && b[1].len() == 10));
    assert_eq!(all[3][1][4], "k34");
    assert_eq!(all[3][0][4], "p34");
    // A shard's range starting and ending inside row groups: batches of 6, the last shorter.
    let reader = StringBatches::open(&p, &["key", "split"], Some(37..75), 6).unwrap();
    assert_eq!((reader.rows(), reader.total_rows()), (38, 100));
    let batches: Vec<Vec<Vec<String>>> = reader.map(Result::unwrap).collect();
    let sizes: Vec<usize> = batches.iter().map(|b| b[0].len()).collect();
    assert_eq!(sizes, [6, 6, 6, 6, 6, 6, 2]);
    let keys: Vec<String> = batches.iter().flat_map(|b| b[0].clone()).collect();
    let want: Vec<String> = (37..75).map(|i| format!("k{i}")).collect();
    assert_eq!(keys, want);
    assert_eq!(batches[0][1][0], "test", "row 37's split");
    // The same rows as the whole-column reader.
    let whole = read_string_columns(&p, &["key"]).unwrap().remove(0);
    assert_eq!(whole[37..75], keys[..]);
    // Empty ranges and the end of the file.
    assert_eq!(
        StringBatches::open(&p, &["key"], Some(100..100), 6)
            .unwrap()
            .count(),
        0
    );
    let tail: Vec<_> = StringBatches::open(&p, &["key"], Some(96..100), 6)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tail, [vec![vec!["k96", "k97", "k98", "k99"]]]);
}

#[test]
fn string_batches_name_the_file_and_column_of_what_they_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("records.parquet");
    string_table(&p, 20, 16);
    let e = StringBatches::open(&p, &["key", "caption"], None, 8)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: no column `caption` (columns: key, split, path)",
            p.display()
        )
    );
    let e = StringBatches::open(&p, &["key"], Some(10..21), 8)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        format!("{}: rows 10..21 asked of a table of 20 rows", p.display())
    );
    let missing = tmp.path().join("none.parquet");
    let e = StringBatches::open(&missing, &["key"], None, 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with(&missing.display().to_string()), "{e}");
}
