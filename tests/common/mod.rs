//! Shared by the end-to-end tests: the repository, the real MiniLM folder, the smaller demo.
#![allow(dead_code)]

pub mod moto;
pub mod s3;

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real all-MiniLM-L6-v2 folder (scripts/test-assets-encoders.sh fetches it).
pub fn minilm() -> PathBuf {
    let root = std::env::var_os("ADAPTOR_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/test-assets"));
    let dir = root.join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/test-assets-encoders.sh",
        dir.display()
    );
    dir
}

/// `manifests/demo.toml`, smaller (fewer images, one seed, two label fractions, fewer epochs),
/// with absolute backbone paths so that it runs from any folder.
pub fn small_demo() -> String {
    let demo = std::fs::read_to_string(repo().join("manifests/demo.toml")).unwrap();
    [
        ("n = 600", "n = 300".to_string()),
        ("n = 120", "n = 40".to_string()),
        ("seed = [0, 1, 2]", "seed = [0]".to_string()),
        (
            "fraction = [0.01, 0.1, 1.0]",
            "fraction = [0.1, 1.0]".to_string(),
        ),
        ("epochs = 20,", "epochs = 10,".to_string()),
        ("epochs = 8\n", "epochs = 2\n".to_string()),
        (
            "\"../.cache/test-assets/all-MiniLM-L6-v2\"",
            format!("\"{}\"", minilm().display()),
        ),
        (
            "\"../data/encoders/dinov2\"",
            format!("\"{}/data/encoders/dinov2\"", repo().display()),
        ),
    ]
    .iter()
    .fold(demo, |text, (from, to)| {
        assert!(text.contains(from), "demo.toml no longer contains `{from}`");
        text.replace(from, to)
    })
}

/// The artifact folder of `instance` in a local store (read from the `_manifest.json` files).
pub fn artifact_of(store: &Path, kind: &str, instance: &str) -> PathBuf {
    std::fs::read_dir(store.join(kind))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_to_string(p.join("_manifest.json")).is_ok_and(|m| {
                serde_json::from_str::<serde_json::Value>(&m).unwrap()["instance"] == instance
            })
        })
        .unwrap_or_else(|| panic!("no complete artifact of {instance} in {}", store.display()))
}

/// A synthetic MIMIC-CXR records table through the real MiniLM; `SHARDS` is replaced by a
/// `shards = N` line or nothing. Batches of one text, so that a batch never spans two shards and
/// the vectors do not depend on where the shards cut.
pub const SHARDED_ENCODE: &str = r#"
[backbones.minilm]
kind = "bert"
weights = "MINILM"

[stages.synth]
kind = "synth"
params = { dataset = "mimic-cxr", n = 12, seed = 3, image_size = 64 }

[stages.ingest]
kind = "ingest"
inputs.raw = "synth"
params = { verify = "exists" }

[stages.enc]
kind = "encode-text"
inputs.records = "ingest"
inputs.backbone = "backbones.minilm"
params = { batch_size = 1, pooling = "mean", device = "cpu", max_length = 64 }
SHARDS

[executor.slurm]
cpus = 1
"#;
