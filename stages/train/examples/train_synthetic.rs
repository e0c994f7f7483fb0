//! Trains the original Adaptor on synthetic pooled pairs with a shared latent cause
//! (image = A·z + noise, text = B·z + noise) and leaves every output in a folder, to look at:
//!
//! `cargo run -p train --example train_synthetic -- OUT_DIR [epochs] [noise]`

use std::ops::ControlFlow;
use tch::Tensor;
use train::rng::uniform_values;
use train::{fit, AdaptorConfig, EpochMetrics, InMemoryPairs, Observer, TrainConfig};

fn latent_pairs(n: i64, dv: i64, dt: i64, noise: f64, seed: u64) -> InMemoryPairs {
    let latent = 16;
    let u = |s: u64, rows: i64, cols: i64, b: f64| {
        Tensor::from_slice(&uniform_values(s, (rows * cols) as usize, 0.0, b)).view([rows, cols])
    };
    let (a, b) = (u(1001, dv, latent, 1.0), u(1002, dt, latent, 1.0));
    let z = u(seed, n, latent, 1.0);
    let image = z.matmul(&a.transpose(0, 1)) + u(seed + 1, n, dv, noise);
    let text = z.matmul(&b.transpose(0, 1)) + u(seed + 2, n, dt, noise);
    InMemoryPairs::pooled(image, text).unwrap()
}

struct Print;
impl Observer for Print {
    fn on_epoch(&mut self, m: &EpochMetrics) -> ControlFlow<()> {
        println!(
            "epoch {:>2}: train {:.4}  valid {:.4}  R@1 i→t {:.3} t→i {:.3}{}",
            m.epoch,
            m.train_loss,
            m.val_loss,
            m.recall.image_to_text_r1,
            m.recall.text_to_image_r1,
            if m.improved { "  *" } else { "" }
        );
        ControlFlow::Continue(())
    }
    fn log(&mut self, line: &str) {
        println!("{line}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(
        args.get(1)
            .expect("usage: train_synthetic OUT_DIR [epochs] [noise]"),
    );
    let epochs = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(8);
    let noise = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(2.0);
    let cfg = TrainConfig {
        lr: 1e-4,
        batch_size: 128,
        epochs,
        patience: Some(3),
        ..TrainConfig::new(AdaptorConfig::original(512))
    };
    let (tr, va) = (
        latent_pairs(2048, 512, 768, noise, 10),
        latent_pairs(512, 512, 768, noise, 20),
    );
    let r = fit(&cfg, &tr, &va, &out, &mut Print).unwrap();
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
}
