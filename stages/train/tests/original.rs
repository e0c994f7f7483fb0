//! The original Adaptor against reference section A and a PyTorch re-implementation of it
//! (`tools/adaptor_reference.py`, fixtures in `data/adaptor/`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use adaptor_train::optim::{AdamW, DecayPolicy};
use adaptor_train::params::{read_safetensors, write_safetensors};
use adaptor_train::{Adaptor, AdaptorConfig, Batch, CheckpointInfo, ImageOnly, Mode};
use common::{max_abs_diff, python, Fixture};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

#[test]
fn trainable_parameter_counts_are_the_originals() {
    for (dv, want) in [(512, 12_011_009), (384, 11_912_705), (768, 12_207_617)] {
        let m = Adaptor::new(&AdaptorConfig::original(dv), Device::Cpu, 0).unwrap();
        assert_eq!(m.num_trainable_params(), want, "vision dim {dv}");
        assert!(m.params().iter().all(|(_, t)| t.requires_grad()));
    }
}

#[test]
fn state_dict_names_and_shapes_are_the_originals() {
    let m = Adaptor::new(&AdaptorConfig::original(384), Device::Cpu, 0).unwrap();
    let mut want: Vec<(String, Vec<i64>)> = vec![
        ("projection.visual_projection.weight".into(), vec![768, 384]),
        ("projection.text_projection.weight".into(), vec![768, 768]),
    ];
    for i in 0..2 {
        let p = format!("adaptor_module.encoder.{i}");
        for (n, s) in [
            ("attn.in_proj_weight", vec![2304, 768]),
            ("attn.in_proj_bias", vec![2304]),
            ("attn.out_proj.weight", vec![768, 768]),
            ("attn.out_proj.bias", vec![768]),
            ("linear1.weight", vec![2048, 768]),
            ("linear1.bias", vec![2048]),
            ("linear2.weight", vec![768, 2048]),
            ("linear2.bias", vec![768]),
            ("norm1.weight", vec![768]),
            ("norm1.bias", vec![768]),
            ("norm2.weight", vec![768]),
            ("norm2.bias", vec![768]),
        ] {
            want.push((format!("{p}.{n}"), s));
        }
    }
    want.push(("logit_scale".into(), vec![]));
    let got: Vec<(String, Vec<i64>)> = m
        .params()
        .iter()
        .map(|(n, t)| (n.to_string(), t.size()))
        .collect();
    assert_eq!(got, want);
    // Initial values: ln(1/0.07), LayerNorm ones/zeros, zero attention biases.
    let p = |n: &str| m.params().get(n).unwrap().shallow_clone();
    assert!((p("logit_scale").double_value(&[]) - 2.659260036932778).abs() < 1e-6);
    assert_eq!(
        p("adaptor_module.encoder.1.norm2.weight")
            .sum(Kind::Float)
            .double_value(&[]),
        768.0
    );
    assert_eq!(
        p("adaptor_module.encoder.0.attn.in_proj_bias")
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    // One layer: the original's encoder is then a single module, without an index (A.6).
    let one = Adaptor::new(
        &AdaptorConfig {
            layers: 1,
            ..AdaptorConfig::original(384)
        },
        Device::Cpu,
        0,
    )
    .unwrap();
    assert!(one
        .params()
        .get("adaptor_module.encoder.attn.in_proj_weight")
        .is_some());
}

#[test]
fn forward_matches_the_pytorch_reference() {
    let f = Fixture::load();
    let m = f.model();
    let batch = Batch::Pooled {
        image: f.t("input.image"),
        text: f.t("input.text"),
    };
    let out = tch::no_grad(|| m.forward(&batch, Mode::EVAL)).unwrap();
    let d_img = max_abs_diff(&out.image, &f.t("expected.image_embeds"));
    let d_txt = max_abs_diff(&out.text, &f.t("expected.text_embeds"));
    let d_log = max_abs_diff(&out.logits_per_text, &f.t("expected.logits_per_text"));
    let d_loss = (out.loss.double_value(&[]) - f.t("expected.loss").double_value(&[])).abs();
    eprintln!(
        "max |Δ|: image {d_img:.2e}, text {d_txt:.2e}, logits {d_log:.2e}, loss {d_loss:.2e}"
    );
    assert!(
        d_img < TOL && d_txt < TOL && d_loss < TOL,
        "embeddings/loss differ from PyTorch"
    );
    // Logits are scaled by exp(2.66) ≈ 14.3: the same relative tolerance.
    assert!(d_log < TOL * 14.3);
}

#[test]
fn image_only_paths_match_the_pytorch_reference() {
    let f = Fixture::load();
    let m = f.model();
    let image = f.t("input.image");
    let per_sample = m.embed_image(&image, None, ImageOnly::PerSample).unwrap();
    let batch_attending = m
        .embed_image(&image, None, ImageOnly::OriginalBatchAttending)
        .unwrap();
    let tokens = m
        .embed_image(&f.t("input.image_tokens"), None, ImageOnly::PerSample)
        .unwrap();
    let d1 = max_abs_diff(&per_sample, &f.t("expected.image_only"));
    let d2 = max_abs_diff(
        &batch_attending,
        &f.t("expected.image_only_batch_attending"),
    );
    let d3 = max_abs_diff(&tokens, &f.t("expected.image_tokens"));
    eprintln!("max |Δ|: per-sample {d1:.2e}, batch-attending {d2:.2e}, patch tokens {d3:.2e}");
    assert!(d1 < TOL && d2 < TOL && d3 < TOL);
    // Per sample, the image-only output is the pre-training image embedding (G.6)...
    assert!(max_abs_diff(&per_sample, &f.t("expected.image_embeds")) < TOL);
    // ...and does not depend on the rest of the batch, unlike the original's 2-D call.
    let first3 = m
        .embed_image(&image.narrow(0, 0, 3), None, ImageOnly::PerSample)
        .unwrap();
    assert!(max_abs_diff(&first3, &per_sample.narrow(0, 0, 3)) < 1e-6);
    let first3_orig = m
        .embed_image(
            &image.narrow(0, 0, 3),
            None,
            ImageOnly::OriginalBatchAttending,
        )
        .unwrap();
    assert!(max_abs_diff(&first3_orig, &batch_attending.narrow(0, 0, 3)) > 1e-4);
}

fn check_sums(what: &str, t: &Tensor, want: &serde_json::Value) {
    let t = t.to_kind(Kind::Double);
    let sum = t.sum(Kind::Double).double_value(&[]);
    let sumsq = (&t * &t).sum(Kind::Double).double_value(&[]);
    let (ws, wq) = (
        want["sum"].as_f64().unwrap(),
        want["sumsq"].as_f64().unwrap(),
    );
    let n = t.numel() as f64;
    assert!(
        (sumsq - wq).abs() <= 1e-4 * wq + 1e-12,
        "{what}: sum of squares {sumsq} vs {wq}"
    );
    assert!(
        (sum - ws).abs() <= 1e-4 * (n * wq).sqrt() + 1e-9,
        "{what}: sum {sum} vs {ws}"
    );
}

#[test]
fn gradients_match_the_pytorch_reference() {
    let f = Fixture::load();
    let m = f.model();
    let batch = Batch::Pooled {
        image: f.t("input.image"),
        text: f.t("input.text"),
    };
    m.forward(&batch, Mode::EVAL).unwrap().loss.backward();
    for (name, p) in m.params().iter() {
        check_sums(&format!("grad {name}"), &p.grad(), &f.meta["grads"][name]);
    }
    let g = m
        .params()
        .get("logit_scale")
        .unwrap()
        .grad()
        .double_value(&[]);
    assert!((g - f.t("expected.grad.logit_scale").double_value(&[])).abs() < TOL);
    let g = m
        .params()
        .get("adaptor_module.encoder.1.norm2.weight")
        .unwrap()
        .grad();
    assert!(max_abs_diff(&g, &f.t("expected.grad.encoder.1.norm2.weight")) < TOL);
    // Attention over one key: query and key projections get exactly zero gradient.
    let g = m
        .params()
        .get("adaptor_module.encoder.0.attn.in_proj_weight")
        .unwrap()
        .grad();
    assert_eq!(g.narrow(0, 0, 1536).abs().max().double_value(&[]), 0.0);
}

#[test]
fn adamw_steps_match_torch_optim_adamw_under_both_decay_policies() {
    let f = Fixture::load();
    let batch = Batch::Pooled {
        image: f.t("input.image"),
        text: f.t("input.text"),
    };
    for (policy, decay) in [
        ("original", DecayPolicy::All),
        ("fixed", DecayPolicy::WeightsOnly),
    ] {
        let m = f.model();
        let mut opt = AdamW::new(m.params(), (0.9, 0.999), 1e-8, 0.01, decay);
        for _ in 0..3 {
            opt.zero_grad();
            m.forward(&batch, Mode::EVAL).unwrap().loss.backward();
            opt.step(1e-3);
        }
        for (name, p) in m.params().iter() {
            check_sums(
                &format!("{policy} {name}"),
                &p.detach(),
                &f.meta["adamw"]["params"][policy][name],
            );
        }
        let p = |n: &str| m.params().get(n).unwrap().detach();
        for name in [
            "projection.text_projection.weight",
            "adaptor_module.encoder.0.linear1.weight",
        ] {
            let d = max_abs_diff(
                &p(name).narrow(0, 0, 2),
                &f.t(&format!("adamw.{policy}.{name}.rows0")),
            );
            assert!(d < TOL, "{policy} {name}: {d}");
        }
        let w = p("adaptor_module.encoder.0.attn.in_proj_weight");
        let n = "adaptor_module.encoder.0.attn.in_proj_weight";
        assert!(
            max_abs_diff(
                &w.narrow(0, 0, 2),
                &f.t(&format!("adamw.{policy}.{n}.rows0"))
            ) < TOL
        );
        assert!(
            max_abs_diff(
                &w.narrow(0, 1536, 2),
                &f.t(&format!("adamw.{policy}.{n}.rows_v"))
            ) < TOL
        );
        let ls = p("logit_scale").double_value(&[]);
        assert!(
            (ls - f
                .t(&format!("adamw.{policy}.logit_scale"))
                .double_value(&[]))
            .abs()
                < TOL
        );
        let nb = "adaptor_module.encoder.1.norm1.bias";
        assert!(max_abs_diff(&p(nb), &f.t(&format!("adamw.{policy}.{nb}"))) < TOL);
    }
}

/// The Rust checkpoint loads in PyTorch with `load_state_dict(strict=True)` and gives the same
/// outputs there; PyTorch's own `state_dict` (re-saved) loads back here with identical values.
#[test]
fn checkpoint_round_trips_through_pytorch_load_state_dict() {
    let f = Fixture::load();
    let m = f.model();
    let batch = Batch::Pooled {
        image: f.t("input.image"),
        text: f.t("input.text"),
    };
    // Move the weights off the generator's values first (two AdamW steps).
    let mut opt = AdamW::new(
        m.params(),
        (0.9, 0.999),
        1e-8,
        0.01,
        DecayPolicy::WeightsOnly,
    );
    for _ in 0..2 {
        opt.zero_grad();
        m.forward(&batch, Mode::EVAL).unwrap().loss.backward();
        opt.step(1e-3);
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("adaptor.safetensors");
    m.save(&ckpt, &CheckpointInfo::new(m.cfg.clone())).unwrap();
    let out = tch::no_grad(|| m.forward(&batch, Mode::EVAL)).unwrap();
    let image_only = m
        .embed_image(&f.t("input.image"), None, ImageOnly::PerSample)
        .unwrap();
    let io = dir.path().join("io.safetensors");
    write_safetensors(
        &io,
        &[
            ("input.image".into(), f.t("input.image")),
            ("input.text".into(), f.t("input.text")),
            ("rust.image_embeds".into(), out.image.detach()),
            ("rust.text_embeds".into(), out.text.detach()),
            ("rust.loss".into(), out.loss.detach()),
            ("rust.image_only".into(), image_only),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    let resaved = dir.path().join("torch_state_dict.safetensors");
    let script = common::repo_root().join("tools/adaptor_reference.py");
    let res = Command::new(python())
        .arg(&script)
        .arg("verify")
        .args(["--checkpoint".as_ref(), ckpt.as_os_str()])
        .args([
            "--config".as_ref(),
            dir.path().join("adaptor.json").as_os_str(),
        ])
        .args(["--io".as_ref(), io.as_os_str()])
        .args(["--resave".as_ref(), resaved.as_os_str()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&res.stderr));
    assert!(
        res.status.success(),
        "PyTorch could not load the checkpoint or outputs differ"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["tensors"], 27);
    assert_eq!(report["ok"], true);
    // The other direction.
    let back = Adaptor::load(&m.cfg, &resaved, Device::Cpu).unwrap();
    for ((n1, a), (n2, b)) in m.params().iter().zip(back.params().iter()) {
        assert_eq!(n1, n2);
        assert!(a.equal(b), "{n1} changed through PyTorch");
    }
    // And through our own reader, config included.
    let (again, info) = Adaptor::from_checkpoint(&ckpt, Device::Cpu).unwrap();
    assert_eq!(info.model, m.cfg);
    assert_eq!(read_safetensors(&ckpt).unwrap().len(), 27);
    assert!(again
        .params()
        .iter()
        .zip(m.params().iter())
        .all(|((_, a), (_, b))| a.equal(b)));
}

/// The property the fusion variant fixes: in the original, a text's embedding does not depend on
/// any image (attention over a length-one sequence ignores its query; reference A.2).
#[test]
fn in_the_original_text_embeddings_ignore_the_images() {
    let f = Fixture::load();
    let m = f.model();
    let text = f.t("input.text");
    let a = Batch::Pooled {
        image: f.t("input.image"),
        text: text.shallow_clone(),
    };
    let b = Batch::Pooled {
        image: f.t("input.image").flip([0]) * 3.0 + 1.0,
        text,
    };
    let (_, ta) = m.embed(&a, Default::default()).unwrap();
    let (_, tb) = m.embed(&b, Default::default()).unwrap();
    assert_eq!(max_abs_diff(&ta, &tb), 0.0);
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    let m = Adaptor::new(&AdaptorConfig::original(512), Device::Cpu, 0).unwrap();
    let bad = Batch::Pooled {
        image: Tensor::zeros([2, 384], (Kind::Float, Device::Cpu)),
        text: Tensor::zeros([2, 768], (Kind::Float, Device::Cpu)),
    };
    let err = m.forward(&bad, Mode::EVAL).err().unwrap().to_string();
    assert!(err.contains("[B, 512]"), "{err}");
    let wrong = AdaptorConfig::original(384);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    m.save(&p, &CheckpointInfo::new(m.cfg.clone())).unwrap();
    let err = Adaptor::load(&wrong, &p, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("visual_projection.weight") && err.contains("384"),
        "{err}"
    );
}

/// The benchmark's `full_attention` mode (query/key projections and a real softmax over the one
/// key) computes the same thing as the default shortcut.
#[test]
fn full_attention_mode_matches_the_reference_too() {
    let f = Fixture::load();
    let m = f.model();
    let batch = Batch::Pooled {
        image: f.t("input.image"),
        text: f.t("input.text"),
    };
    let mode = Mode {
        full_attention: true,
        ..Mode::EVAL
    };
    let out = tch::no_grad(|| m.forward(&batch, mode)).unwrap();
    assert!(max_abs_diff(&out.image, &f.t("expected.image_embeds")) < TOL);
    assert!(max_abs_diff(&out.text, &f.t("expected.text_embeds")) < TOL);
}

/// bf16 (matrix products in bfloat16, the rest in fp32) stays close to fp32. Training refuses
/// bf16 on a CPU; the model-level path is exercised here because no GPU is at hand.
#[test]
fn bf16_forward_is_close_to_fp32() {
    let f = Fixture::load();
    let m = f.model();
    let batch = Batch::Pooled {
        image: f.t("input.image"),
        text: f.t("input.text"),
    };
    let mode = Mode {
        precision: adaptor_train::Precision::Bf16,
        ..Mode::EVAL
    };
    let out = tch::no_grad(|| m.forward(&batch, mode)).unwrap();
    let d = max_abs_diff(&out.image, &f.t("expected.image_embeds"));
    let dl = (out.loss.double_value(&[]) - f.t("expected.loss").double_value(&[])).abs();
    eprintln!("bf16 vs fp32: embeddings {d:.2e}, loss {dl:.2e}");
    assert!(d < 2e-2 && dl < 5e-2 && d > 0.0);
}
