//! Shared by the integration tests: the PyTorch reference fixtures (`data/adaptor/`, written by
//! `tools/adaptor_reference.py fixtures`) and the project's Python.
#![allow(dead_code)]

pub mod parity;

use std::path::PathBuf;

use tch::{Device, Tensor};
use train::params::read_safetensors;
use train::rng::uniform_values;
use train::{Adaptor, AdaptorConfig, Batch};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub struct Fixture {
    pub meta: serde_json::Value,
    pub tensors: Vec<(String, Tensor)>,
}

impl Fixture {
    pub fn load() -> Fixture {
        let dir = repo_root().join("data/adaptor");
        let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap())
            .unwrap();
        let tensors = read_safetensors(&dir.join("parity.safetensors")).unwrap();
        Fixture { meta, tensors }
    }

    pub fn t(&self, name: &str) -> Tensor {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
            .1
            .shallow_clone()
    }

    pub fn vision_dim(&self) -> i64 {
        self.meta["vision_dim"].as_i64().unwrap()
    }

    /// The fixture's weights, generated from their spec (splitmix64, exact in numpy and Rust),
    /// each checked against the checksum the script recorded.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.meta["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let name = w["name"].as_str().unwrap().to_string();
                let shape: Vec<i64> = w["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect();
                let n: i64 = shape.iter().product();
                let vals = uniform_values(
                    w["seed"].as_u64().unwrap(),
                    n as usize,
                    w["center"].as_f64().unwrap(),
                    w["bound"].as_f64().unwrap(),
                );
                let sum: f64 = vals.iter().map(|&v| v as f64).sum();
                let want = w["sum"].as_f64().unwrap();
                assert!(
                    (sum - want).abs() <= 1e-9 * (1.0 + want.abs()) * (n as f64).sqrt(),
                    "{name}: generated weights differ from the fixture's ({sum} vs {want})"
                );
                (name, Tensor::from_slice(&vals).reshape(&shape))
            })
            .collect()
    }

    /// The original module with the fixture's weights.
    /// The fixture's pooled input pairs as one batch.
    pub fn pooled(&self) -> Batch {
        Batch::Pooled {
            image: self.t("input.image"),
            text: self.t("input.text"),
        }
    }

    /// Every comparison within its tolerance, failures reported with the fixture's machine.
    pub fn assert_within(&self, comparisons: &[parity::Comparison]) {
        parity::assert_all_within(comparisons, &parity::fixture_machine(&self.meta));
    }

    pub fn model(&self) -> Adaptor {
        let m = Adaptor::new(&AdaptorConfig::original(self.vision_dim()), Device::Cpu, 0).unwrap();
        m.params()
            .load(&self.weights(), std::path::Path::new("parity.json"))
            .unwrap();
        m
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// The project's Python (the venv with torch 2.11), for tests that check against PyTorch.
pub fn python() -> PathBuf {
    let candidates = [
        std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/python")),
        Some(repo_root().join(".venv/bin/python")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .expect("no Python with torch: run scripts/setup.sh (creates .venv) or set VIRTUAL_ENV")
}

/// Moves the first parameter of `m` by the parity perturbation; returns its name as the
/// detection message shows it (`` `name` ``).
pub fn perturb_first(m: &Adaptor) -> String {
    let (name, first) = m.params().iter().next().unwrap();
    parity::perturb(first);
    format!("`{name}`")
}
