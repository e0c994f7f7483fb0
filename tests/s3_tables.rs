//! Embedding tables read straight from S3 (a real S3-compatible server, moto on 127.0.0.1): a stage
//! whose table input is streamed gets no cache copy of it, and an object whose bytes changed behind
//! its `_manifest.json` fails the stage, naming the file, with nothing published.

mod common;

use common::{walk, Case};

/// synth → ingest → encode-image (the tiny random DINOv2) → classify without an adaptor, on S3.
fn manifest(seeds: &str) -> String {
    format!(
        r#"store = "s3://tables/t"

[backbones.vit]
kind = "dinov2"
weights = "{repo}/data/encoders/dinov2"

[matrix]
seed = [{seeds}]

[stages.synth]
kind = "synth"
params = {{ dataset = "rsna", n = 60, seed = 7, image_size = 64 }}

[stages.ingest]
kind = "ingest"
inputs.raw = "synth"
params = {{ split_seed = 0 }}

[stages.image]
kind = "encode-image"
params = {{ pooling = "mean" }}
inputs = {{ records = "ingest", raw = "synth", backbone = "backbones.vit" }}

[stages.classify]
kind = "classify"
foreach = ["seed"]
params = {{ seed = "${{seed}}", epochs = 3, batch_size = 16 }}
inputs = {{ features = "image", records = "ingest" }}
"#,
        repo = common::repo().display()
    )
}

fn manifests(moto: &common::moto::Moto, kind: &str) -> Vec<String> {
    moto.keys("tables", &format!("t/{kind}/"))
        .into_iter()
        .filter(|k| k.ends_with("/_manifest.json"))
        .collect()
}

#[test]
fn s3_a_stage_streams_its_table_without_a_copy_and_a_changed_object_fails_it_by_name() {
    let moto = common::moto::start("tables");
    let case = Case::with_env(moto.env());
    case.write("m.toml", &manifest("0"));
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(manifests(&moto, "classify").len(), 1);

    // The records were copied into the cache (the stage reads them as a folder); the embedding
    // table was not: classify streamed it from the store.
    let cached = walk(&case.path().join("cache"));
    assert!(
        cached.iter().any(|p| p.ends_with("records.parquet")),
        "{cached:?}"
    );
    assert!(
        !cached
            .iter()
            .any(|p| p.to_string_lossy().contains("encode-image")),
        "a cache copy of the table: {cached:?}"
    );
    // One float of the table changed behind the manifest (same size: only the digest tells).
    let table = moto
        .keys("tables", "t/encode-image/")
        .into_iter()
        .find(|k| k.ends_with("/embeddings.parquet"))
        .expect("the table's object");
    let (status, mut bytes) =
        common::moto::http_bytes(moto.port, "GET", &format!("/tables/{table}"), &[]);
    assert_eq!(status, 200);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let (status, _) =
        common::moto::http_bytes(moto.port, "PUT", &format!("/tables/{table}"), &bytes);
    assert_eq!(status, 200);

    // A new classify instance reads it: it fails naming the object, and publishes nothing.
    case.write("m.toml", &manifest("0, 1"));
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("s3://tables/{table}"))
            && out.contains("content digest")
            && out.contains("nothing read from it may be used"),
        "{out}"
    );
    assert_eq!(manifests(&moto, "classify").len(), 1, "{out}");

    // Asked for cache copies instead, the copy is refused the same way (never taken as complete).
    let mut env = moto.env();
    env.push(("ADAPTOR_S3_CACHE_TABLES".into(), "1".into()));
    let copying = Case::with_env(env);
    copying.write("m.toml", &manifest("0, 1"));
    let (code, out) = copying.go(&["run", "m.toml"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&table) && out.contains("content digest"),
        "{out}"
    );
    assert!(!walk(&copying.path().join("cache"))
        .iter()
        .any(|p| p.to_string_lossy().contains("encode-image") && p.ends_with("_manifest.json")));
    assert_eq!(manifests(&moto, "classify").len(), 1, "{out}");
}

#[test]
fn s3_embed_reads_its_input_from_s3_and_uploads_its_table_with_its_digest() {
    let moto = common::moto::start("tables");
    let case = Case::with_env(moto.env());
    let texts = "no acute cardiopulmonary process\nright lower lobe opacity\nclear lungs\n";
    let (status, _) =
        common::moto::http_bytes(moto.port, "PUT", "/tables/in/texts.txt", texts.as_bytes());
    assert_eq!(status, 200);
    let minilm = common::minilm();
    let args = |input: &str| {
        vec![
            "embed".to_string(),
            "text".into(),
            "--backbone".into(),
            minilm.display().to_string(),
            "--input".into(),
            input.into(),
            "--output".into(),
            "s3://tables/out/texts.parquet".into(),
            "--threads".into(),
            "1".into(),
        ]
    };
    let a = args("s3://tables/in/texts.txt");
    let out = case.ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains("uploaded s3://tables/out/texts.parquet ("),
        "{out}"
    );

    // The object is the table the line describes: its size and digest, three rows.
    let (status, bytes) =
        common::moto::http_bytes(moto.port, "GET", "/tables/out/texts.parquet", &[]);
    assert_eq!(status, 200);
    let got = case.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    std::fs::write(got.join("texts.parquet"), &bytes).unwrap();
    let f = &pipeline::store::describe_outputs(&got).unwrap()[0];
    assert!(
        out.contains(&format!("({} B, blake3 {})", f.bytes, f.blake3)),
        "{out}"
    );
    let t = artifacts::table::EmbeddingTable::read(&got.join("texts.parquet")).unwrap();
    assert_eq!(t.keys, ["0", "1", "2"]);
    // Nothing left in the cache folder.
    assert!(!walk(&case.path().join("cache"))
        .iter()
        .any(|p| p.to_string_lossy().contains("embed-")));

    // A missing input object is named; nothing is uploaded.
    let a = args("s3://tables/in/missing.txt");
    let (code, out) = case.go(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("s3://tables/in/missing.txt") && out.contains("does not exist"),
        "{out}"
    );
}
