//! Parity with a reference implementation: one comparison rule for every numerical test of the
//! torch crates, a way to prove each test can fail, and both machines named when one does.
//!
//! The rule is numpy's `allclose`, scaled by the reference as a whole:
//! `max|got − want| ≤ atol + rtol · max|want|`. The same float32 maths run on another CPU
//! (instruction set, thread count) differs in the last bits, because libtorch picks other matrix
//! and convolution kernels and sums in another order; such differences grow with the magnitude
//! of the values and the depth of the computation, so a tolerance relative to the reference's
//! magnitude is what they obey. An absolute threshold on outputs in the hundreds tests the CPU.
//!
//! Each test states its error budget next to its `Tol`, and runs once more with one weight
//! perturbed by [`PERTURBATION`] to show that the budget still catches a real bug
//! ([`assert_detects`]).
//!
//! Shared by the test suites of `train` and `adaptor-torch` (the latter includes this file
//! by path), so it lives in test code, not in a library.
#![allow(dead_code)]

use std::fmt::Write as _;

use tch::{Kind, Tensor};

/// What a deliberate bug changes: one weight moved by this much must fail every parity test.
pub const PERTURBATION: f64 = 1e-3;

/// Tolerance of one comparison: `max|got − want| ≤ atol + rtol · max|want|`.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
}

impl Tol {
    pub const fn new(rtol: f64, atol: f64) -> Tol {
        Tol { rtol, atol }
    }
}

/// The result of one comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub what: String,
    pub max_diff: f64,
    /// `max|want|`.
    pub scale: f64,
    pub tol: Tol,
}

impl Comparison {
    pub fn allowed(&self) -> f64 {
        self.tol.atol + self.tol.rtol * self.scale
    }

    /// False for a NaN difference too.
    pub fn ok(&self) -> bool {
        self.max_diff <= self.allowed()
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: max |difference| {:.3e} {} allowed {:.3e} (atol {:.0e} + rtol {:.0e} × max|reference| {:.3e})",
            self.what,
            self.max_diff,
            if self.ok() { "within" } else { "EXCEEDS" },
            self.allowed(),
            self.tol.atol,
            self.tol.rtol,
            self.scale
        )
    }
}

/// Compares two tensors of the same shape (in float64).
pub fn compare(what: impl Into<String>, got: &Tensor, want: &Tensor, tol: Tol) -> Comparison {
    let what = what.into();
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let (g, w) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let max_diff = if g.numel() == 0 {
        0.0
    } else {
        (&g - &w).abs().max().double_value(&[])
    };
    let scale = if w.numel() == 0 {
        0.0
    } else {
        w.abs().max().double_value(&[])
    };
    Comparison {
        what,
        max_diff,
        scale,
        tol,
    }
}

/// Compares two scalars (a loss, a sum).
pub fn compare_scalar(what: impl Into<String>, got: f64, want: f64, tol: Tol) -> Comparison {
    Comparison {
        what: what.into(),
        max_diff: (got - want).abs(),
        scale: want.abs(),
        tol,
    }
}

/// The machine a fixture was made on, from the `machine` object its script records.
pub fn fixture_machine(meta: &serde_json::Value) -> String {
    let m = &meta["machine"];
    if m.is_null() {
        return "not recorded (fixture predates the record)".into();
    }
    format!(
        "{} (PyTorch CPU capability {}, {} threads, torch {})",
        m["cpu"].as_str().unwrap_or("?"),
        m["capability"].as_str().unwrap_or("?"),
        m["threads"],
        m["torch"].as_str().unwrap_or("?")
    )
}

/// This machine: CPU model, the widest vector extension it has, libtorch's thread count and the
/// override of libtorch's kernel choice if one is set.
pub fn this_machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let isa = if has("avx512f") {
        "AVX-512"
    } else if has("avx2") {
        "AVX2"
    } else {
        "no AVX2"
    };
    let mut s = format!("{cpu} ({isa}, {} threads", tch::get_num_threads());
    for var in [
        "ATEN_CPU_CAPABILITY",
        "ONEDNN_MAX_CPU_ISA",
        "MKL_ENABLE_INSTRUCTIONS",
    ] {
        if let Ok(v) = std::env::var(var) {
            let _ = write!(s, ", {var}={v}");
        }
    }
    s.push(')');
    s
}

/// Asserts that every comparison holds; on failure names each one that does not and the machines
/// on both sides. Prints every measured difference (visible with `--nocapture`), so the margins
/// can be read off a run.
pub fn assert_all_within(results: &[Comparison], fixture: &str) {
    for c in results {
        eprintln!("parity {c}");
    }
    let bad: Vec<String> = results
        .iter()
        .filter(|c| !c.ok())
        .map(|c| format!("  {c}"))
        .collect();
    assert!(
        bad.is_empty(),
        "parity with the reference fails:\n{}\n  fixture made on: {fixture}\n  this machine:    {}",
        bad.join("\n"),
        this_machine()
    );
}

/// Asserts that at least one comparison fails: the run with a perturbed weight must be caught.
pub fn assert_detects(perturbed: &str, results: &[Comparison]) {
    let worst = results
        .iter()
        .map(|c| c.max_diff / c.allowed())
        .fold(0.0f64, f64::max);
    eprintln!("perturbation of {perturbed}: worst difference {worst:.1}× the allowed");
    assert!(
        results.iter().any(|c| !c.ok()),
        "moving {perturbed} by {PERTURBATION:e} is not caught by any comparison: the tolerances \
         are too loose to find a real bug\n{}",
        results
            .iter()
            .map(|c| format!("  {c}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Moves the first element of `t` by [`PERTURBATION`], in place (a parameter or a weight).
pub fn perturb(t: &Tensor) {
    tch::no_grad(|| {
        let mut first = t.view([-1]).get(0);
        let _ = first.f_add_scalar_(PERTURBATION).unwrap();
    });
}
