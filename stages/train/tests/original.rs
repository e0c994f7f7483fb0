//! The original Adaptor against reference section A and a PyTorch re-implementation of it
//! (`tools/adaptor_reference.py`, fixtures in `data/adaptor/`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::parity::{assert_detects, compare, compare_scalar, perturb, Comparison, Tol};
use common::{max_abs_diff, perturb_first, python, Fixture};
use tch::{Device, Kind, Tensor};
use train::optim::{AdamW, DecayPolicy};
use train::params::{read_safetensors, write_safetensors};
use train::{Adaptor, AdaptorConfig, Batch, CheckpointInfo, ImageOnly, Mode};

/// Error budget of the adaptor's forward and backward pass: two post-norm transformer layers of
/// width 768 (matmuls over 512–2048 terms) and embeddings of magnitude below 1. Another kernel
/// order costs up to sqrt(2048)·6e-8 ≈ 3e-6 relative per matmul, ~1e-5 through the depth (5e-7
/// was measured here, with AVX-512 and with AVX2 kernels): rtol 5e-5 leaves a margin of 5× over
/// the estimate, while a weight moved by 1e-3 is caught (asserted). Logits are cosines times
/// exp(logit_scale) ≈ 14.3 and gradients scale with the loss: relative, the same rule holds.
const FORWARD: Tol = Tol::new(5e-5, 1e-7);
/// Gradients of the fixture's loss: the same arithmetic as the forward pass run backwards, but
/// one weight moved by 1e-3 changes them by less than the forward outputs, so the budget is
/// tighter: relative differences of 2e-7 were measured (AVX-512 and AVX2 kernels alike), 50×
/// below rtol 1e-5; atol 1e-9 keeps sums of squares of small gradients (≈ 3e-3) relative too.
const GRADIENTS: Tol = Tol::new(1e-5, 1e-9);
/// AdamW normalises every update to about `lr` whatever the gradient's size, so a relative
/// difference δ in a small gradient becomes an absolute difference of about lr·δ in the weight:
/// atol is 1 % of one step at lr 1e-3 (1.7e-6 was measured against PyTorch on this machine).
const ADAMW: Tol = Tol::new(1e-4, 1e-5);

/// Every comparison of the forward and image-only paths with the reference.
fn forward_comparisons(m: &Adaptor, f: &Fixture) -> Vec<Comparison> {
    let batch = f.pooled();
    let out = tch::no_grad(|| m.forward(&batch, Mode::EVAL)).unwrap();
    let image = f.t("input.image");
    let embed = |x: &Tensor, how| tch::no_grad(|| m.embed_image(x, None, how)).unwrap();
    vec![
        compare(
            "image embeddings",
            &out.image,
            &f.t("expected.image_embeds"),
            FORWARD,
        ),
        compare(
            "text embeddings",
            &out.text,
            &f.t("expected.text_embeds"),
            FORWARD,
        ),
        compare(
            "logits per text",
            &out.logits_per_text,
            &f.t("expected.logits_per_text"),
            FORWARD,
        ),
        compare_scalar(
            "loss",
            out.loss.double_value(&[]),
            f.t("expected.loss").double_value(&[]),
            FORWARD,
        ),
        compare(
            "image-only, per sample",
            &embed(&image, ImageOnly::PerSample),
            &f.t("expected.image_only"),
            FORWARD,
        ),
        compare(
            "image-only, batch-attending",
            &embed(&image, ImageOnly::OriginalBatchAttending),
            &f.t("expected.image_only_batch_attending"),
            FORWARD,
        ),
        compare(
            "image-only, patch tokens",
            &embed(&f.t("input.image_tokens"), ImageOnly::PerSample),
            &f.t("expected.image_tokens"),
            FORWARD,
        ),
    ]
}

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
    f.assert_within(&forward_comparisons(&f.model(), &f));
}

#[test]
fn forward_parity_catches_a_perturbed_weight() {
    let f = Fixture::load();
    let m = f.model();
    let name = perturb_first(&m);
    assert_detects(&name, &forward_comparisons(&m, &f));
}

#[test]
fn image_only_paths_match_the_pytorch_reference() {
    let f = Fixture::load();
    let m = f.model();
    let image = f.t("input.image");
    let per_sample = m.embed_image(&image, None, ImageOnly::PerSample).unwrap();
    // Per sample, the image-only output is the pre-training image embedding (G.6)...
    f.assert_within(&[compare(
        "image-only vs pre-training image embedding",
        &per_sample,
        &f.t("expected.image_embeds"),
        FORWARD,
    )]);
    // ...and does not depend on the rest of the batch, unlike the original's 2-D call.
    let first3 = m
        .embed_image(&image.narrow(0, 0, 3), None, ImageOnly::PerSample)
        .unwrap();
    assert!(max_abs_diff(&first3, &per_sample.narrow(0, 0, 3)) < 1e-6);
    let batch_attending = m
        .embed_image(&image, None, ImageOnly::OriginalBatchAttending)
        .unwrap();
    let first3_orig = m
        .embed_image(
            &image.narrow(0, 0, 3),
            None,
            ImageOnly::OriginalBatchAttending,
        )
        .unwrap();
    assert!(max_abs_diff(&first3_orig, &batch_attending.narrow(0, 0, 3)) > 1e-4);
}

/// A tensor against the sum and sum of squares the reference recorded for it (the fixture keeps
/// those instead of every value): the sum of squares relative to itself, the sum relative to
/// its largest possible size, sqrt(n · sum of squares).
fn sums(what: &str, t: &Tensor, want: &serde_json::Value, tol: Tol) -> [Comparison; 2] {
    let t = t.to_kind(Kind::Double);
    let sum = t.sum(Kind::Double).double_value(&[]);
    let sumsq = (&t * &t).sum(Kind::Double).double_value(&[]);
    let (ws, wq) = (
        want["sum"].as_f64().unwrap(),
        want["sumsq"].as_f64().unwrap(),
    );
    let n = t.numel() as f64;
    [
        compare_scalar(format!("{what}: sum of squares"), sumsq, wq, tol),
        Comparison {
            scale: (n * wq).sqrt(),
            ..compare_scalar(format!("{what}: sum"), sum, ws, tol)
        },
    ]
}

/// Every comparison of the gradients of one loss evaluation with the reference.
fn gradient_comparisons(m: &Adaptor, f: &Fixture) -> Vec<Comparison> {
    let batch = f.pooled();
    m.forward(&batch, Mode::EVAL).unwrap().loss.backward();
    let mut out = Vec::new();
    for (name, p) in m.params().iter() {
        out.extend(sums(
            &format!("grad {name}"),
            &p.grad(),
            &f.meta["grads"][name],
            GRADIENTS,
        ));
    }
    let grad = |n: &str| m.params().get(n).unwrap().grad();
    out.push(compare_scalar(
        "grad logit_scale",
        grad("logit_scale").double_value(&[]),
        f.t("expected.grad.logit_scale").double_value(&[]),
        GRADIENTS,
    ));
    out.push(compare(
        "grad encoder.1.norm2.weight",
        &grad("adaptor_module.encoder.1.norm2.weight"),
        &f.t("expected.grad.encoder.1.norm2.weight"),
        GRADIENTS,
    ));
    out
}

#[test]
fn gradients_match_the_pytorch_reference() {
    let f = Fixture::load();
    let m = f.model();
    f.assert_within(&gradient_comparisons(&m, &f));
    // Attention over one key: query and key projections get exactly zero gradient.
    let g = m
        .params()
        .get("adaptor_module.encoder.0.attn.in_proj_weight")
        .unwrap()
        .grad();
    assert_eq!(g.narrow(0, 0, 1536).abs().max().double_value(&[]), 0.0);
}

#[test]
fn gradient_parity_catches_a_perturbed_weight() {
    let f = Fixture::load();
    let m = f.model();
    let name = perturb_first(&m);
    assert_detects(&name, &gradient_comparisons(&m, &f));
}

/// Every comparison of the weights after three AdamW steps with torch.optim.AdamW's, under
/// both decay policies (`perturb`: move the first parameter before the steps).
fn adamw_comparisons(f: &Fixture, perturb_first: bool) -> Vec<Comparison> {
    let batch = f.pooled();
    let mut out = Vec::new();
    for (policy, decay) in [
        ("original", DecayPolicy::All),
        ("fixed", DecayPolicy::WeightsOnly),
    ] {
        let m = f.model();
        if perturb_first {
            perturb(m.params().iter().next().unwrap().1);
        }
        let mut opt = AdamW::new(m.params(), (0.9, 0.999), 1e-8, 0.01, decay);
        for _ in 0..3 {
            opt.zero_grad();
            m.forward(&batch, Mode::EVAL).unwrap().loss.backward();
            opt.step(1e-3);
        }
        for (name, p) in m.params().iter() {
            out.extend(sums(
                &format!("{policy} {name}"),
                &p.detach(),
                &f.meta["adamw"]["params"][policy][name],
                ADAMW,
            ));
        }
        let p = |n: &str| m.params().get(n).unwrap().detach();
        let fx = |n: &str| f.t(&format!("adamw.{policy}.{n}"));
        for name in [
            "projection.text_projection.weight",
            "adaptor_module.encoder.0.linear1.weight",
            "adaptor_module.encoder.0.attn.in_proj_weight",
        ] {
            out.push(compare(
                format!("{policy} {name} rows 0-1"),
                &p(name).narrow(0, 0, 2),
                &fx(&format!("{name}.rows0")),
                ADAMW,
            ));
        }
        let n = "adaptor_module.encoder.0.attn.in_proj_weight";
        out.push(compare(
            format!("{policy} {n} value rows"),
            &p(n).narrow(0, 1536, 2),
            &fx(&format!("{n}.rows_v")),
            ADAMW,
        ));
        out.push(compare_scalar(
            format!("{policy} logit_scale"),
            p("logit_scale").double_value(&[]),
            fx("logit_scale").double_value(&[]),
            ADAMW,
        ));
        let nb = "adaptor_module.encoder.1.norm1.bias";
        out.push(compare(format!("{policy} {nb}"), &p(nb), &fx(nb), ADAMW));
    }
    out
}

#[test]
fn adamw_steps_match_torch_optim_adamw_under_both_decay_policies() {
    let f = Fixture::load();
    f.assert_within(&adamw_comparisons(&f, false));
}

#[test]
fn adamw_parity_catches_a_perturbed_weight() {
    let f = Fixture::load();
    assert_detects(
        "`projection.visual_projection.weight`",
        &adamw_comparisons(&f, true),
    );
}

/// The Rust checkpoint loads in PyTorch with `load_state_dict(strict=True)` and gives the same
/// outputs there; PyTorch's own `state_dict` (re-saved) loads back here with identical values.
#[test]
fn checkpoint_round_trips_through_pytorch_load_state_dict() {
    let f = Fixture::load();
    let m = f.model();
    let batch = f.pooled();
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
    let batch = f.pooled();
    let mode = Mode {
        full_attention: true,
        ..Mode::EVAL
    };
    let out = tch::no_grad(|| m.forward(&batch, mode)).unwrap();
    f.assert_within(&[
        compare(
            "full attention: image embeddings",
            &out.image,
            &f.t("expected.image_embeds"),
            FORWARD,
        ),
        compare(
            "full attention: text embeddings",
            &out.text,
            &f.t("expected.text_embeds"),
            FORWARD,
        ),
    ]);
}

/// bf16 (matrix products in bfloat16, the rest in fp32) stays close to fp32. Training refuses
/// bf16 on a CPU; the model-level path is exercised here because no GPU is at hand.
#[test]
fn bf16_forward_is_close_to_fp32() {
    let f = Fixture::load();
    let m = f.model();
    let batch = f.pooled();
    let mode = Mode {
        precision: train::Precision::Bf16,
        ..Mode::EVAL
    };
    let out = tch::no_grad(|| m.forward(&batch, mode)).unwrap();
    let d = max_abs_diff(&out.image, &f.t("expected.image_embeds"));
    let dl = (out.loss.double_value(&[]) - f.t("expected.loss").double_value(&[])).abs();
    eprintln!("bf16 vs fp32: embeddings {d:.2e}, loss {dl:.2e}");
    assert!(d < 2e-2 && dl < 5e-2 && d > 0.0);
}
