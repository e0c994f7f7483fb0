//! Training learns: synthetic pairs that share a latent cause (image = A·z + noise,
//! text = B·z + noise) are pulled together, so the validation loss falls and retrieval recall@1
//! on the validation split ends far above chance. The real-data version (synthetic MIMIC-CXR
//! miniature, real MiniLM, a small vision encoder) needs the encode stages; see docs/adaptor.md.

use tch::{Kind, Tensor};
use train::rng::uniform_values;
use train::{fit, AdaptorConfig, InMemoryPairs, Silent, StopReason, TrainConfig};

fn latent_pairs(n: i64, dv: i64, dt: i64, latent: i64, seed: u64) -> InMemoryPairs {
    // The mixing matrices are shared by every split (fixed seeds); z and the noise are not.
    let a = Tensor::from_slice(&uniform_values(1001, (dv * latent) as usize, 0.0, 1.0))
        .view([dv, latent]);
    let b = Tensor::from_slice(&uniform_values(1002, (dt * latent) as usize, 0.0, 1.0))
        .view([dt, latent]);
    let z = Tensor::from_slice(&uniform_values(seed, (n * latent) as usize, 0.0, 1.0))
        .view([n, latent]);
    let noise = |s: u64, d: i64| {
        Tensor::from_slice(&uniform_values(s, (n * d) as usize, 0.0, 0.3)).view([n, d])
    };
    let image = z.matmul(&a.transpose(0, 1)) + noise(seed + 1, dv);
    let text = z.matmul(&b.transpose(0, 1)) + noise(seed + 2, dt);
    InMemoryPairs::pooled(image.to_kind(Kind::Float), text.to_kind(Kind::Float)).unwrap()
}

#[test]
fn training_lowers_validation_loss_and_recall_beats_chance() {
    // The real original module (512-d vision input).
    let cfg = TrainConfig {
        lr: 1e-4,
        batch_size: 128,
        epochs: 4,
        patience: None,
        ..TrainConfig::new(AdaptorConfig::original(512))
    };
    let (tr, va) = (
        latent_pairs(1024, 512, 768, 16, 10),
        latent_pairs(256, 512, 768, 16, 20),
    );
    let dir = tempfile::tempdir().unwrap();
    let r = fit(&cfg, &tr, &va, dir.path(), &mut Silent).unwrap();
    let best = r.best_recall.unwrap();
    eprintln!(
        "val loss {:.4} → {:.4}; R@1 i→t {:.3} → {:.3}, t→i {:.3} → {:.3} (chance {:.4})",
        r.initial_val_loss,
        r.best_val_loss.unwrap(),
        r.initial_recall.image_to_text_r1,
        best.image_to_text_r1,
        r.initial_recall.text_to_image_r1,
        best.text_to_image_r1,
        1.0 / 256.0
    );
    assert_eq!(r.stop, StopReason::Completed);
    assert!(
        r.best_val_loss.unwrap() < 0.8 * r.initial_val_loss,
        "validation loss did not drop enough"
    );
    let chance = 1.0 / 256.0;
    assert!(
        best.image_to_text_r1 > 10.0 * chance && best.text_to_image_r1 > 10.0 * chance,
        "recall@1 near chance: {best:?}"
    );
}
