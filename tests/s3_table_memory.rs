//! A table several times larger than the memory budget, streamed from S3 (moto on 127.0.0.1) by the
//! reader the stages use (`artifacts::table::open_remote`): the peak resident memory it adds stays
//! under the budget's order, not the table's size, and every row arrives with the digest checked.
//! Its own binary: the peak (VmHWM) is the whole process's.

mod common;

use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use pipeline::{RemoteFile, RemoteInput, Store, StoreSettings, StoreUrl};

const DIM: usize = 256;
const ROWS: usize = 110_000; // 110k × 256 × 4 B ≈ 113 MB
const BUDGET: u64 = 16 << 20;

/// The process's peak resident memory (VmHWM) in bytes.
fn peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Resets VmHWM to the current resident size (Linux: `5` into clear_refs).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// A pooled embedding table in the layout `artifacts::table` reads (written here in row groups
/// of 4 MiB, as a streaming writer under this budget would), batch by batch.
fn write_table(path: &std::path::Path, rows: usize) {
    let kv = [
        ("format", "1"),
        ("table", "embeddings"),
        ("backbone", "big"),
        ("backbone_kind", "dinov2"),
        ("dim", &DIM.to_string()),
        ("pooling", "mean"),
        ("preprocessing", "{}"),
        ("precision", "fp32"),
        ("shard", "0/1"),
        ("rows", &format!("0..{rows} of {rows}")),
    ]
    .iter()
    .map(|(k, v)| KeyValue::new(format!("adaptor.{k}"), v.to_string()))
    .collect();
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(field.clone(), DIM as i32),
            false,
        ),
    ]));
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some((4 << 20) / (DIM * 4)))
        .set_key_value_metadata(Some(kv))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let step = 4096;
    for start in (0..rows).step_by(step) {
        let n = step.min(rows - start);
        let keys: StringArray = (start..start + n)
            .map(|i| Some(format!("k{i:07}")))
            .collect();
        let values =
            Float32Array::from_iter_values((0..n * DIM).map(|j| ((start * DIM + j) % 1000) as f32));
        let list = FixedSizeListArray::new(field.clone(), DIM as i32, Arc::new(values), None);
        let cols: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(list)];
        w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
    }
    w.close().unwrap();
}

/// Uploads the table under an attempt folder of a store on the test's server; where it is, as the
/// runner hands it to a stage.
fn upload(
    moto: &common::moto::Moto,
    dir: &std::path::Path,
    rows: usize,
    name: &str,
) -> RemoteInput {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    write_table(&out.join("embeddings.parquet"), rows);
    let files = pipeline::store::describe_outputs(&out).unwrap();
    let settings = StoreSettings {
        aws: moto.env(),
        ..Default::default()
    };
    let url = StoreUrl::parse("s3://tables/mem", dir).unwrap();
    let store = Store::open(&url, &settings, &dir.join("cache")).unwrap();
    let object = format!("encode-image/{name}/_attempt-1/embeddings.parquet");
    store
        .upload_file(&out.join("embeddings.parquet"), &object)
        .unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    RemoteInput {
        store: url.to_string(),
        files: vec![RemoteFile {
            path: "embeddings.parquet".into(),
            object,
            bytes: files[0].bytes,
            blake3: files[0].blake3.clone(),
        }],
    }
}

/// Streams the table, checking every row's first value; (rows, peak memory added).
fn stream(remote: &RemoteInput, access: &[(String, String)]) -> (usize, u64) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float32Type;
    reset_peak();
    let before = peak();
    let mut table =
        artifacts::table::open_remote(remote, "embeddings.parquet", access, BUDGET).unwrap();
    let mut rows = 0;
    for batch in table.by_ref() {
        let batch = batch.unwrap();
        let list = batch
            .column_by_name("embedding")
            .unwrap()
            .as_fixed_size_list();
        let values = list.values().as_primitive::<Float32Type>();
        for r in 0..batch.num_rows() {
            let want = (((rows + r) * DIM) % 1000) as f32;
            assert_eq!(values.value(r * DIM), want, "row {}", rows + r);
        }
        rows += batch.num_rows();
    }
    (rows, peak().saturating_sub(before))
}

#[test]
fn s3_a_table_six_times_the_budget_streams_with_bounded_memory_and_its_digest_checked() {
    let moto = common::moto::start("tables");
    let dir = tempfile::tempdir().unwrap();
    let big = upload(&moto, dir.path(), ROWS, "big");
    let tiny = upload(&moto, dir.path(), 1000, "tiny");
    assert!(big.files[0].bytes > 6 * BUDGET, "{}", big.files[0].bytes);

    let (rows, tiny_peak) = stream(&tiny, &moto.env());
    assert_eq!(rows, 1000);
    let (rows, big_peak) = stream(&big, &moto.env());
    assert_eq!(rows, ROWS);
    eprintln!(
        "table {} MB: peak memory added {} MiB (a 1000-row table: {} MiB), budget {} MiB",
        big.files[0].bytes / 1_000_000,
        big_peak >> 20,
        tiny_peak >> 20,
        BUDGET >> 20
    );
    // The budget bounds the decoded batches (an eighth of it each, `batch_rows`) beside one row
    // group's column chunk (4 MiB): well under the budget twice over, whatever the table's size.
    assert!(
        big_peak < 2 * BUDGET,
        "peak memory added {} MiB streaming a {} MB table",
        big_peak >> 20,
        big.files[0].bytes / 1_000_000
    );

    // The same object with a digest that is not its own: every row decodes, then the last item
    // is the mismatch, naming the object.
    let mut wrong = big.clone();
    wrong.files[0].blake3 = "0".repeat(64);
    let items: Vec<_> =
        artifacts::table::open_remote(&wrong, "embeddings.parquet", &moto.env(), BUDGET)
            .unwrap()
            .collect();
    let last = items.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(
        last.contains("s3://tables/mem/encode-image/big/_attempt-1/embeddings.parquet")
            && last.contains("differs from the recorded"),
        "{last}"
    );
    assert!(items[..items.len() - 1].iter().all(|b| b.is_ok()));
}
