//! DINOv2 against transformers' `Dinov2Model`, the ResNet-AE encoder against torchxrayvision's
//! `_ResNetAE.encode`, and the preprocessing against the original's (fixtures from
//! tools/encoders_make_fixtures.py).

mod common;

use common::*;
use stages::images;
use tch::{Device, Kind, Tensor};
use torch_stages::dinov2::Dinov2Model;
use torch_stages::preprocess::{Normalize, Preprocess};
use torch_stages::resnet_ae::ResNetAeEncoder;

fn check_dinov2(dir: &str) {
    let model = Dinov2Model::load(&fixtures().join(dir), Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("{dir}: {e}"));
    let r = reference("dinov2-reference.safetensors");
    // 70 px: the pre-training grid; 56 px: interpolated down; 98×84: up and non-square.
    for case in ["s70", "s56", "s98x84"] {
        let (cls, tokens) = model.forward(&r[&format!("{case}_pixels")]).unwrap();
        assert_close(
            &format!("{dir} {case} cls"),
            &cls,
            &r[&format!("{case}_cls")],
            1e-4,
        );
        assert_close(
            &format!("{dir} {case} patch tokens"),
            &tokens,
            &r[&format!("{case}_tokens")],
            1e-4,
        );
    }
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
fn resnet_ae_encoder_matches_torchxrayvision() {
    let r = reference("resnet-ae-reference.safetensors");
    for file in ["state-dict.pt", "state-dict-legacy.pt", "module-legacy.pt"] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixtures().join("resnet-ae").join(file),
            tmp.path().join(file),
        )
        .unwrap();
        let enc = ResNetAeEncoder::load(tmp.path(), Device::Cpu, Kind::Float)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            enc.blocks,
            [2, 2, 3, 2],
            "{file}: block counts read off the weights"
        );
        let z = enc.encode(&r["pixels"]).unwrap();
        assert_eq!(z.size(), [2, 16, 3, 3], "{file}: latent at 224 px");
        // Latent values reach the tens: compare relative to their scale.
        let scale = r["z"].abs().max().double_value(&[]).max(1.0);
        assert_close(
            &format!("{file} latent"),
            &(&z / scale),
            &(&r["z"] / scale),
            1e-4,
        );
        assert_close(
            &format!("{file} mean-pooled"),
            &(ResNetAeEncoder::pooled(&z) / scale),
            &(&r["mean"] / scale),
            1e-4,
        );
    }
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
        // INTER_AREA on floats in [-1024, 1024]: float32 rounding only.
        assert_close(
            &format!("resnet-ae {resize}->{crop}"),
            &got,
            &r[&format!("resnet_ae_{resize}_{crop}")],
            1e-3,
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
    assert_close(
        "dinov2 bf16 cls",
        &cls.to_kind(Kind::Float),
        &r["s56_cls"],
        0.1,
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
    let scale = r["mean"].abs().max().double_value(&[]);
    assert_close(
        "resnet-ae bf16 mean",
        &(mean / scale),
        &(&r["mean"] / scale),
        0.05,
    );
}
