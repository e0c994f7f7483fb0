//! The fusion variant: parameter budget, shapes, masking, and information flow across modalities.

use tch::{Device, Kind, Tensor};
use train::fusion::FusionAdaptor;
use train::model::Model;
use train::rng::uniform_values;
use train::{
    fit, Adaptor, AdaptorConfig, Batch, InMemoryPairs, Mode, Silent, StopReason, TrainConfig,
};

fn rand(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    Tensor::from_slice(&uniform_values(seed, n as usize, 0.0, 1.0)).view(shape)
}

/// `[B, L]` masks with `lens[b]` real tokens at the front.
fn mask(lens: &[i64], l: i64) -> Tensor {
    let rows: Vec<Tensor> = lens
        .iter()
        .map(|&n| Tensor::arange(l, (Kind::Int64, Device::Cpu)).lt(n))
        .collect();
    Tensor::stack(&rows, 0)
}

fn fusion(m: &Adaptor) -> &FusionAdaptor {
    match m.model() {
        Model::Fusion(f) => f,
        Model::Original(_) => unreachable!(),
    }
}

struct Tokens {
    image: Tensor,
    image_mask: Tensor,
    text: Tensor,
    text_mask: Tensor,
}

fn tokens(dv: i64) -> Tokens {
    Tokens {
        image: rand(&[3, 6, dv], 1),
        image_mask: mask(&[6, 4, 5], 6),
        text: rand(&[3, 7, 768], 2),
        text_mask: mask(&[3, 7, 5], 7),
    }
}

#[test]
fn parameter_count_is_within_the_original_budget() {
    // d = 512, 8 heads, ff 1536, one self-attention layer per modality, one co-attention layer.
    let (d, ff) = (512i64, 1536i64);
    let attn = 4 * d * d + 4 * d;
    let ffn = d * ff + ff + ff * d + d;
    let self_block = 2 * (2 * d) + attn + ffn; // norm_q, norm2
    let cross_block = 3 * (2 * d) + attn + ffn; // norm_q, norm_kv, norm2
    for (dv, want, original) in [
        (512, 11_174_915, 12_011_009),
        (384, 11_109_379, 11_912_705),
        (768, 11_305_987, 12_207_617),
    ] {
        let formula = (dv * d + d) + (768 * d + d) // projections
            + 2 * self_block + 2 * (2 * d) // unimodal layers + their final norms
            + 2 * cross_block + 2 * (2 * d) // co-attention + fused norms
            + (2 * d * 2 + 2) + 1; // ITM head, logit scale
        let m = Adaptor::new(&AdaptorConfig::fusion(dv), Device::Cpu, 0).unwrap();
        assert_eq!(m.num_trainable_params(), formula, "vision dim {dv}");
        assert_eq!(formula, want);
        assert!((want as f64) < original as f64 && (want as f64) > 0.9 * original as f64);
    }
}

#[test]
fn shapes_and_losses() {
    let m = Adaptor::new(&AdaptorConfig::fusion(384), Device::Cpu, 3).unwrap();
    let t = tokens(384);
    let batch = Batch::Tokens {
        image: t.image,
        image_mask: t.image_mask,
        text: t.text,
        text_mask: t.text_mask,
    };
    let out = m.forward(&batch, Mode::TRAIN).unwrap();
    assert_eq!(out.image.size(), [3, 512]);
    assert_eq!(out.text.size(), [3, 512]);
    assert_eq!(out.logits_per_text.size(), [3, 3]);
    let itm = out.itm.as_ref().unwrap().double_value(&[]);
    let total = out.loss.double_value(&[]);
    assert!(itm > 0.0 && (total - out.contrastive.double_value(&[]) - itm).abs() < 1e-5);
    out.loss.backward();
    let no_grad: Vec<&str> = m
        .params()
        .iter()
        .filter(|(_, p)| {
            !p.grad().defined() || p.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0
        })
        .map(|(n, _)| n)
        .collect();
    assert!(
        no_grad.is_empty(),
        "parameters without gradient: {no_grad:?}"
    );
    // Unit-norm embeddings; pooled inputs work as one-token sequences.
    let norms = out.image.norm_scalaropt_dim(2, [1i64], false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    let pooled = Batch::Pooled {
        image: rand(&[4, 384], 5),
        text: rand(&[4, 768], 6),
    };
    assert_eq!(
        m.forward(&pooled, Mode::EVAL).unwrap().image.size(),
        [4, 512]
    );
    // The image-only path needs no text.
    let e = m
        .embed_image(
            &rand(&[2, 6, 384], 7),
            Some(&mask(&[6, 2], 6)),
            Default::default(),
        )
        .unwrap();
    assert_eq!(e.size(), [2, 512]);
}

#[test]
fn padding_tokens_do_not_change_any_output() {
    let m = Adaptor::new(&AdaptorConfig::fusion(384), Device::Cpu, 3).unwrap();
    let f = fusion(&m);
    let t = tokens(384);
    let run = |image: &Tensor, image_mask: &Tensor, text: &Tensor, text_mask: &Tensor| {
        tch::no_grad(|| {
            let s = f
                .streams(image, image_mask, text, text_mask, Mode::EVAL)
                .unwrap();
            let (ei, et) = FusionAdaptor::embeddings(&s);
            let (fi, ft) = f.fuse(&s, Mode::EVAL);
            let itm = f.itm_logits(&s, Mode::EVAL);
            [ei, et, fi, ft, itm]
        })
    };
    let base = run(&t.image, &t.image_mask, &t.text, &t.text_mask);
    // Garbage (even NaN) in the padded positions.
    let pad_i = t.image_mask.logical_not().unsqueeze(-1);
    let pad_t = t.text_mask.logical_not().unsqueeze(-1);
    let image2 = t.image.masked_fill(&pad_i, f64::NAN);
    let text2 = t.text.masked_fill(&pad_t, 1e4);
    let garbage = run(&image2, &t.image_mask, &text2, &t.text_mask);
    for (a, b) in base.iter().zip(&garbage) {
        assert!(a.equal(b), "padding values changed an output");
    }
    // More padding at the end of every sequence.
    let extra_i = Tensor::cat(&[&t.image, &rand(&[3, 3, 384], 8)], 1);
    let extra_im = Tensor::cat(
        &[
            &t.image_mask,
            &Tensor::zeros([3, 3], (Kind::Bool, Device::Cpu)),
        ],
        1,
    );
    let extra_t = Tensor::cat(&[&t.text, &rand(&[3, 2, 768], 9)], 1);
    let extra_tm = Tensor::cat(
        &[
            &t.text_mask,
            &Tensor::zeros([3, 2], (Kind::Bool, Device::Cpu)),
        ],
        1,
    );
    let longer = run(&extra_i, &extra_im, &extra_t, &extra_tm);
    for (a, b) in base.iter().zip(&longer) {
        assert!(
            (a - b).abs().max().double_value(&[]) < 1e-5,
            "longer padding changed an output"
        );
    }
}

/// What the original lacks: the fused text representation depends on the image tokens (and
/// gradients flow from it into the image side), and the other way round.
#[test]
fn information_and_gradients_cross_modalities() {
    let m = Adaptor::new(&AdaptorConfig::fusion(384), Device::Cpu, 3).unwrap();
    let f = fusion(&m);
    let t = tokens(384);
    let fused = |image: &Tensor, text: &Tensor| {
        let s = f
            .streams(image, &t.image_mask, text, &t.text_mask, Mode::EVAL)
            .unwrap();
        f.fuse(&s, Mode::EVAL)
    };
    let (fi, ft) = tch::no_grad(|| fused(&t.image, &t.text));
    // Change only sample 1's image: sample 1's fused text changes, the others' do not.
    let image2 = t.image.copy();
    let _ = image2.get(1).g_mul_scalar_(-2.0);
    let (_, ft2) = tch::no_grad(|| fused(&image2, &t.text));
    let diff = (&ft - &ft2).abs().max_dim(1, false).0;
    assert!(
        diff.double_value(&[1]) > 1e-3,
        "fused text ignores its image"
    );
    assert_eq!(diff.double_value(&[0]), 0.0);
    assert_eq!(diff.double_value(&[2]), 0.0);
    // Likewise text → fused image.
    let text2 = t.text.copy();
    let _ = text2.get(0).g_add_scalar_(1.0);
    let (fi2, _) = tch::no_grad(|| fused(&t.image, &text2));
    assert!(
        (&fi - &fi2).abs().max().double_value(&[]) > 1e-3,
        "fused image ignores its text"
    );
    // Gradient of the fused text with respect to the image tokens.
    let image = t.image.set_requires_grad(true);
    let (_, ft) = fused(&image, &t.text);
    ft.sum(Kind::Float).backward();
    let g = image.grad();
    let real = g.masked_select(&t.image_mask.unsqueeze(-1).expand_as(&g));
    assert!(real.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Padded image tokens get no gradient.
    let padded = g.masked_select(&t.image_mask.logical_not().unsqueeze(-1).expand_as(&g));
    assert_eq!(padded.abs().sum(Kind::Float).double_value(&[]), 0.0);
}

#[test]
fn the_fusion_variant_trains_on_token_pairs() {
    let (n, dv) = (24i64, 32i64);
    let model = AdaptorConfig {
        vision_dim: dv,
        text_dim: 40,
        fusion: train::FusionConfig {
            d_model: 32,
            heads: 4,
            ff: 64,
            ..Default::default()
        },
        ..AdaptorConfig::fusion(dv)
    };
    let lens_i: Vec<i64> = (0..n).map(|i| 2 + i % 4).collect();
    let lens_t: Vec<i64> = (0..n).map(|i| 1 + i % 6).collect();
    let src = |seed| {
        InMemoryPairs::tokens(
            rand(&[n, 5, dv], seed),
            mask(&lens_i, 5),
            rand(&[n, 6, 40], seed + 1),
            mask(&lens_t, 6),
        )
        .unwrap()
    };
    let cfg = TrainConfig {
        lr: 1e-3,
        batch_size: 8,
        epochs: 2,
        patience: None,
        ..TrainConfig::new(model)
    };
    let dir = tempfile::tempdir().unwrap();
    let r = fit(&cfg, &src(1), &src(11), dir.path(), &mut Silent).unwrap();
    assert_eq!((r.stop, r.steps), (StopReason::Completed, 6));
    assert!(r.best_val_loss.unwrap().is_finite());
    let (m, _) =
        Adaptor::from_checkpoint(&dir.path().join("adaptor.safetensors"), Device::Cpu).unwrap();
    assert_eq!(m.num_trainable_params(), r.trainable_params);
}
