//! DINOv2 against transformers' `Dinov2Model`, the ResNet-AE encoder against torchxrayvision's
//! `_ResNetAE.encode`, and the preprocessing against the original's (fixtures from
//! tools/encoders_make_fixtures.py).

mod common;

use std::path::Path;

use adaptor_torch::dinov2::Dinov2Model;
use adaptor_torch::preprocess::{Normalize, Preprocess};
use adaptor_torch::resnet_ae::ResNetAeEncoder;
use common::*;
use stages::images;
use tch::{Device, Kind, Tensor};

/// Error budget of the DINOv2 fixture model (12 pre-norm blocks would be the real one; the fixture
/// has the real layer types at a small width): float32 reductions over at most a few hundred terms
/// per matmul and softmax, LayerNorm after each block. Another kernel order costs ~1e-6 of the
/// values' magnitude per block; rtol 2e-5 leaves a margin of more than 10× over what another
/// instruction set or thread count gives, while a weight moved by 1e-3 is caught (asserted).
const DINOV2: Tol = Tol::new(2e-5, 1e-7);

fn dinov2_comparisons(dir: &Path, label: &str) -> Vec<Comparison> {
    let model =
        Dinov2Model::load(dir, Device::Cpu, Kind::Float).unwrap_or_else(|e| panic!("{label}: {e}"));
    let r = reference("dinov2-reference.safetensors");
    let mut out = Vec::new();
    // 70 px: the pre-training grid; 56 px: interpolated down; 98×84: up and non-square.
    for case in ["s70", "s56", "s98x84"] {
        let (cls, tokens) = model.forward(&r[&format!("{case}_pixels")]).unwrap();
        out.push(compare(
            format!("{label} {case} cls"),
            &cls,
            &r[&format!("{case}_cls")],
            DINOV2,
        ));
        out.push(compare(
            format!("{label} {case} patch tokens"),
            &tokens,
            &r[&format!("{case}_tokens")],
            DINOV2,
        ));
    }
    out
}

fn check_dinov2(dir: &str) {
    assert_all_within(
        &dinov2_comparisons(&fixtures().join(dir), dir),
        &encoders_machine(),
    );
}

#[test]
fn dinov2_safetensors_in_the_published_layout() {
    check_dinov2("dinov2");
}

#[test]
fn dinov2_pytorch_bin_with_prefix_and_transformers5_names() {
    check_dinov2("dinov2-renamed");
}

#[test]
fn dinov2_parity_catches_a_perturbed_weight() {
    // The first tensor in name order: every token attends to the class token.
    let name = "embeddings.cls_token";
    let tmp = perturbed_copy(&fixtures().join("dinov2"), name);
    assert_detects(
        &format!("dinov2 `{name}`"),
        &dinov2_comparisons(tmp.path(), "perturbed dinov2"),
    );
}

/// Error budget of the ResNet-AE encoder (fixture size): about 30 convolutions with reductions
/// over at most 9·8 terms and BatchNorm folded into them; inputs in [−1024, 1024], so latents
/// reach 4e4. Another kernel order costs a few units of 6e-8 of the magnitude per convolution;
/// 5e-7 was measured against the AVX-512 fixtures here. rtol 1e-5 leaves a margin of 10× and
/// more, while a weight moved by 1e-3 is caught (asserted).
const RESNET_AE: Tol = Tol::new(1e-5, 1e-6);

fn resnet_ae_comparisons(dir: &Path, label: &str) -> Vec<Comparison> {
    let r = reference("resnet-ae-reference.safetensors");
    let enc = ResNetAeEncoder::load(dir, Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(
        enc.blocks,
        [2, 2, 3, 2],
        "{label}: block counts read off the weights"
    );
    let z = enc.encode(&r["pixels"]).unwrap();
    assert_eq!(z.size(), [2, 16, 3, 3], "{label}: latent at 224 px");
    vec![
        compare(format!("{label} latent"), &z, &r["z"], RESNET_AE),
        compare(
            format!("{label} mean-pooled"),
            &ResNetAeEncoder::pooled(&z),
            &r["mean"],
            RESNET_AE,
        ),
    ]
}

#[test]
fn resnet_ae_encoder_matches_torchxrayvision() {
    for file in ["state-dict.pt", "state-dict-legacy.pt", "module-legacy.pt"] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixtures().join("resnet-ae").join(file),
            tmp.path().join(file),
        )
        .unwrap();
        assert_all_within(
            &resnet_ae_comparisons(tmp.path(), file),
            &encoders_machine(),
        );
    }
}

#[test]
fn resnet_ae_parity_catches_a_perturbed_weight() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("resnet-ae/state-dict.pt"),
        tmp.path().join("state-dict.pt"),
    )
    .unwrap();
    // The first weight of the stem convolution, which every later layer sees.
    let name = "conv1.weight";
    let perturbed = perturbed_copy(tmp.path(), name);
    assert_detects(
        &format!("resnet-ae `{name}`"),
        &resnet_ae_comparisons(perturbed.path(), "perturbed resnet-ae"),
    );
}

#[test]
fn preprocessing_matches_the_original() {
    let r = reference("preprocess-reference.safetensors");
    let input = fixtures().join("preprocess-input.png");
    for (resize, crop) in [(256u32, 224u32), (98, 70)] {
        let gray = images::load_mgca(&input, resize).unwrap();
        // The 8-bit crop DINOv2 sees is exact.
        let c = images::center_crop(&gray, crop, crop);
        let want = to_vec_i64(&r[&format!("crop_{resize}_{crop}")]);
        assert_eq!(
            c.data.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            want,
            "crop {resize}->{crop}"
        );
        let ae = Preprocess::ResNetAe { resize, crop }.apply(&gray, crop);
        let got = Tensor::from_slice(&ae).view([1, crop as i64, crop as i64]);
        // INTER_AREA on floats in [-1024, 1024], our code against OpenCV's: float32 rounding
        // of area sums over at most a few dozen pixels, 1e-6 of the range.
        assert_encoder_parity(
            &format!("resnet-ae {resize}->{crop}"),
            &got,
            &r[&format!("resnet_ae_{resize}_{crop}")],
            Tol::new(1e-6, 0.0),
        );
    }
    for norm in [Normalize::Imagenet, Normalize::Half] {
        let p = Preprocess::Dinov2 {
            resize: 98,
            crop: 70,
            normalize: norm,
        };
        let got = Tensor::from_slice(&p.load(&input).unwrap()).view([3, 70, 70]);
        let want = &r[&format!("dinov2_{}_98_70", norm.name())];
        assert_eq!(
            max_abs_diff(&got, want),
            0.0,
            "dinov2 {} normalisation is bit-exact",
            norm.name()
        );
    }
}

#[test]
fn corrupt_image_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let p = Preprocess::ResNetAe {
        resize: 256,
        crop: 224,
    };
    let err = p.load(&bad).unwrap_err().to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
    let missing = tmp.path().join("missing.jpg");
    let err = p.load(&missing).unwrap_err().to_string();
    assert!(
        err.contains("missing.jpg") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn bf16_runs_close_to_fp32() {
    let r = reference("dinov2-reference.safetensors");
    let m = Dinov2Model::load(&fixtures().join("dinov2"), Device::Cpu, Kind::BFloat16).unwrap();
    let (cls, _) = m.forward(&r["s56_pixels"]).unwrap();
    assert_eq!(cls.kind(), Kind::BFloat16);
    // bf16 keeps 8 bits of mantissa (2^-8 ≈ 4e-3 relative per rounding) through every layer.
    assert_encoder_parity(
        "dinov2 bf16 cls",
        &cls.to_kind(Kind::Float),
        &r["s56_cls"],
        Tol::new(0.05, 0.0),
    );
    let r = reference("resnet-ae-reference.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("resnet-ae/state-dict.pt"),
        tmp.path().join("m.pt"),
    )
    .unwrap();
    let enc = ResNetAeEncoder::load(tmp.path(), Device::Cpu, Kind::BFloat16).unwrap();
    let mean = ResNetAeEncoder::pooled(&enc.encode(&r["pixels"]).unwrap()).to_kind(Kind::Float);
    assert_encoder_parity(
        "resnet-ae bf16 mean",
        &mean,
        &r["mean"],
        Tol::new(0.05, 0.0),
    );
}
