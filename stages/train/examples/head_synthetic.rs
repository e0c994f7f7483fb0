//! Trains a classification head on synthetic features (a class-dependent shift plus uniform
//! noise) and leaves every output in a folder, to look at:
//!
//! `cargo run -p train --example head_synthetic -- OUT_DIR [mlp|linear] [classes] [fraction]`

use std::ops::ControlFlow;

use tch::Tensor;
use train::rng::uniform_values;
use train::{train_head, HeadConfig, HeadData, HeadEpoch, HeadKind, HeadObserver, HeadSplit};

fn split(n: usize, dim: i64, classes: i64, seed: u64) -> HeadSplit {
    let k = classes.max(2);
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 7 + i / 3) % k).collect();
    let mut v = uniform_values(seed, n * dim as usize, 0.0, 1.0);
    for (row, &l) in labels.iter().enumerate() {
        v[row * dim as usize + l as usize] += 0.7;
    }
    let keys = (0..n).map(|i| format!("s{seed}-{i:05}")).collect();
    HeadSplit::new(Tensor::from_slice(&v).view([n as i64, dim]), labels).with_keys(keys)
}

struct Print;
impl HeadObserver for Print {
    fn on_epoch(&mut self, e: &HeadEpoch) -> ControlFlow<()> {
        println!(
            "epoch {:3}  lr {:.2e}  train {:.4}  valid {:.4}  {:?}{}",
            e.epoch,
            e.lr,
            e.train_loss,
            e.valid_loss,
            e.valid,
            if e.improved { "  *" } else { "" }
        );
        ControlFlow::Continue(())
    }
    fn log(&mut self, line: &str) {
        println!("{line}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(args.get(1).expect("OUT_DIR"));
    let kind = match args.get(2).map(String::as_str) {
        Some("linear") => HeadKind::Linear,
        _ => HeadKind::Mlp,
    };
    let classes: i64 = args.get(3).map_or(1, |s| s.parse().unwrap());
    let fraction: f64 = args.get(4).map_or(1.0, |s| s.parse().unwrap());
    let dim = 64;
    let data = HeadData {
        train: split(4000, dim, classes, 1),
        valid: split(1000, dim, classes, 2),
        test: split(1000, dim, classes, 3),
    };
    let cfg = HeadConfig {
        epochs: 30,
        batch_size: 128,
        lr: 1e-3,
        label_fraction: fraction,
        ..HeadConfig::new(kind, classes)
    };
    let r = train_head(&cfg, &data, &out, &mut Print).unwrap();
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
}
