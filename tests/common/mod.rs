//! Shared by the end-to-end tests: the repository, the real MiniLM folder, the smaller demo.
#![allow(dead_code)]

pub mod moto;
pub mod s3;

use std::path::PathBuf;

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
