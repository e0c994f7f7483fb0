//! Decode once, end to end through the real binaries: a `preprocess` stage decodes a records
//! table's images once, and `encode-image` stages of two backbones reading it write exactly the
//! tables they write decoding the files themselves, while decoding nothing; a preprocessed size
//! other than `resize` is said in the table; bad bindings and bad images get clear errors.

use std::path::Path;

use stages::synth::{self, SynthDataset};

mod common;

use common::{adaptor, artifact_of, ok, repo, text};

/// Synthetic RSNA (DICOM files) through a `preprocess` at 64 px and, for DINOv2 (random training
/// crops) and ResNet-AE, `encode-image` from the files (`files`) and from the preprocessed pixels
/// (`once`); `smaller` reads the 64 px pixels at resize 56.
fn manifest(dir: &Path) -> String {
    let ae = dir.join("resnet-ae");
    std::fs::create_dir_all(&ae).unwrap();
    std::fs::copy(
        repo().join("data/encoders/resnet-ae/state-dict.pt"),
        ae.join("state-dict.pt"),
    )
    .unwrap();
    format!(
        r#"
[backbones.vit]
kind = "dinov2"
weights = "{vit}"

[backbones.ae]
kind = "resnet-ae"
weights = "{ae}"

[stages.synth]
kind = "synth"
params = {{ dataset = "rsna", n = 24, seed = 3, image_size = 96 }}

[stages.ingest]
kind = "ingest"
inputs.raw = "synth"

[stages.pre]
kind = "preprocess"
params = {{ size = 64 }}
inputs = {{ records = "ingest", raw = "synth" }}

[stages.files]
kind = "encode-image"
foreach = {{ b = ["vit", "ae"] }}
params = {{ resize = 64, image_size = 56, batch_size = 5, train_crop = "random" }}
inputs = {{ records = "ingest", raw = "synth", backbone = "backbones.${{b}}" }}

[stages.once]
kind = "encode-image"
foreach = {{ b = ["vit", "ae"] }}
params = {{ resize = 64, image_size = 56, batch_size = 5, train_crop = "random" }}
inputs = {{ records = "ingest", images = "pre", backbone = "backbones.${{b}}" }}

[stages.smaller]
kind = "encode-image"
params = {{ resize = 56, image_size = 56, batch_size = 5 }}
inputs = {{ records = "ingest", images = "pre", backbone = "backbones.vit" }}
"#,
        vit = repo().join("data/encoders/dinov2").display(),
        ae = ae.display()
    )
}

fn log(store: &Path, kind: &str, instance: &str) -> String {
    std::fs::read_to_string(artifact_of(store, kind, instance).join("_log.txt")).unwrap()
}

#[test]
fn encoding_from_a_preprocess_artifact_equals_decoding_the_files_and_decodes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("m.toml"), manifest(dir)).unwrap();
    let out = ok(dir, &["run", "m.toml", "--store", "st"]);
    assert!(out.contains("0 failed"), "{out}");
    let store = dir.join("st");

    let pre = artifact_of(&store, "preprocess", "pre");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pre.join("images.json")).unwrap()).unwrap();
    assert_eq!(meta["size"], 64);
    assert_eq!(meta["rows"], 24);
    assert_eq!(meta["shards"], serde_json::json!(["pixels-00000.u8"]));
    assert_eq!(
        std::fs::metadata(pre.join("pixels-00000.u8"))
            .unwrap()
            .len(),
        24 * 64 * 64
    );
    assert!(log(&store, "preprocess", "pre").contains("decoded 24/24 images"));

    for b in ["vit", "ae"] {
        let files = artifact_of(&store, "encode-image", &format!("files[b={b}]"));
        let once = artifact_of(&store, "encode-image", &format!("once[b={b}]"));
        let (a, o) = (
            std::fs::read(files.join("embeddings.parquet")).unwrap(),
            std::fs::read(once.join("embeddings.parquet")).unwrap(),
        );
        assert!(a == o, "{b}: the tables differ");
        let (lf, lo) = (
            log(&store, "encode-image", &format!("files[b={b}]")),
            log(&store, "encode-image", &format!("once[b={b}]")),
        );
        assert!(lf.contains("decoded 24 image files"), "{lf}");
        assert!(lo.contains("decoded 0 image files"), "{lo}");
        assert!(
            lo.contains("reading 64 px images preprocessed once"),
            "{lo}"
        );
    }

    // Another resize than the preprocessed size: a second INTER_AREA resize, said in the table.
    let smaller = artifact_of(&store, "encode-image", "smaller");
    let table =
        artifacts::table::EmbeddingTable::read(&smaller.join("embeddings.parquet")).unwrap();
    let files = artifact_of(&store, "encode-image", "files[b=vit]");
    let direct = artifacts::table::EmbeddingTable::read(&files.join("embeddings.parquet")).unwrap();
    assert_eq!(table.rows(), 24);
    assert_ne!(table.values, direct.values);
    let bytes = std::fs::read(smaller.join("embeddings.parquet")).unwrap();
    let needle = br#""from_preprocessed":64"#;
    assert!(bytes.windows(needle.len()).any(|w| w == needle));

    let again = ok(dir, &["run", "m.toml", "--store", "st"]);
    assert!(again.contains("0 ran,"), "{again}");
}

#[test]
fn bad_bindings_are_plan_errors_at_the_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = manifest(dir);
    let cases = [
        (
            r#"inputs = { records = "ingest", images = "pre", backbone = "backbones.vit" }
"#,
            r#"inputs = { records = "ingest", images = "pre", raw = "synth", backbone = "backbones.vit" }
"#,
            "bind either `raw` (decode the files) or `images` (a preprocess artifact), not both",
        ),
        (
            "params = { resize = 56, image_size = 56, batch_size = 5 }",
            "params = { resize = 72, image_size = 56, batch_size = 5 }",
            "`pre` stores 64 px images, smaller than this stage's resize = 72",
        ),
        (
            r#"inputs = { records = "ingest", images = "pre", backbone = "backbones.vit" }
"#,
            r#"inputs = { records = "ingest", backbone = "backbones.vit" }
"#,
            "missing input: bind `raw` (the raw dataset folder) or `images`",
        ),
    ];
    for (from, to, message) in cases {
        assert!(base.contains(from), "{from}");
        std::fs::write(dir.join("m.toml"), base.replacen(from, to, 1)).unwrap();
        let out = adaptor(dir, &["run", "m.toml", "--store", "st", "--dry-run"])
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains(message) && t.contains("m.toml:"), "{t}");
    }
}

#[test]
fn a_missing_or_corrupt_image_fails_preprocess_naming_row_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = dir.join("good");
    synth::generate_with_size(SynthDataset::Covidx, &good, 12, 3, 32).unwrap();
    // The same dataset twice more, one image deleted in one and garbage in the other; the records
    // come from the intact copy, so that only preprocess meets the bad files.
    let list = std::fs::read_to_string(good.join("train_COVIDx9A.txt")).unwrap();
    let first = list.lines().next().unwrap().split(' ').nth(1).unwrap();
    let copy = |name: &str| {
        let to = dir.join(name);
        let status = std::process::Command::new("cp")
            .args(["-r", good.to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        to.join("train").join(first)
    };
    let missing = copy("missing");
    std::fs::remove_file(&missing).unwrap();
    let corrupt = copy("corrupt");
    std::fs::write(&corrupt, b"not an image at all").unwrap();
    let m = format!(
        r#"
[datasets.good]
kind = "covidx"
root = "{}"

[datasets.missing]
kind = "covidx"
root = "{}"

[datasets.corrupt]
kind = "covidx"
root = "{}"

[stages.ingest]
kind = "ingest"
inputs.raw = "datasets.good"

[stages.pre]
kind = "preprocess"
foreach = {{ raw = ["missing", "corrupt"] }}
params = {{ size = 32 }}
inputs = {{ records = "ingest", raw = "datasets.${{raw}}" }}
"#,
        good.display(),
        dir.join("missing").display(),
        dir.join("corrupt").display()
    );
    std::fs::write(dir.join("m.toml"), m).unwrap();
    let out = adaptor(dir, &["run", "m.toml", "--store", "st"])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for (image, what) in [
        (&missing, "No such file"),
        (&corrupt, "cannot decode image"),
    ] {
        let line = t
            .lines()
            .find(|l| l.contains(&format!("{}", image.display())))
            .unwrap_or_else(|| panic!("no error names {}:\n{t}", image.display()));
        assert!(
            line.contains("records.parquet, row ")
                && line.contains("(key `")
                && line.contains(what),
            "{line}"
        );
    }
}
