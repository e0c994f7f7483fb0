//! Classification-head training steps per second over cached features: gather a batch by index,
//! forward in training mode (dropout, BatchNorm on batch statistics), BCE or cross-entropy,
//! backward, AdamW (decay on weight matrices) — the inner step of `train_head`. Used by
//! `bench/heads/run.sh`; prints one JSON line.
//!
//! `bench_heads [--batch 512] [--dim 768] [--classes 1] [--steps 50] [--warmup 5] [--threads 1]
//!  [--linear] [--device cpu|cuda]`

mod common;

use common::{rss_mib, time_steps, Args};
use tch::Tensor;
use train::heads::decays;
use train::optim::AdamW;
use train::rng::{permutation, uniform_values};
use train::{ClassificationHead, HeadKind};

fn main() {
    let args = Args::from_env();
    let (batch, dim, classes, steps, warmup, threads) = (
        args.int("--batch", 512),
        args.int("--dim", 768),
        args.int("--classes", 1),
        args.int("--steps", 50),
        args.int("--warmup", 5),
        args.int("--threads", 1),
    );
    let kind = if args.flag("--linear") {
        HeadKind::Linear
    } else {
        HeadKind::Mlp
    };
    let device = args.device("bench_heads");
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let n = 16 * batch;
    let features = Tensor::from_slice(&uniform_values(1, (n * dim) as usize, 0.0, 1.0))
        .view([n, dim])
        .to_device(device);
    let k = classes.max(2);
    let labels = Tensor::from_slice(&(0..n).map(|i| (i * 7 + i / 3) % k).collect::<Vec<i64>>())
        .to_device(device);
    let head = ClassificationHead::new(kind, dim, classes, 512, 0.1, device, 0).unwrap();
    let mut opt = AdamW::with_decay(head.params(), (0.9, 0.999), 1e-8, 1e-4, decays);
    let order = permutation(3, n as usize);
    let timing = time_steps(warmup, steps, |step| {
        let rows = &order[((step * batch) % n) as usize..][..batch as usize];
        let idx = Tensor::from_slice(rows).to_device(device);
        let x = features.index_select(0, &idx);
        let y = labels.index_select(0, &idx);
        opt.zero_grad();
        let loss = head.loss(&head.forward(&x, true), &y);
        loss.backward();
        opt.step(5e-4);
        let _ = loss.double_value(&[]);
    });
    let total = timing.total();
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-tch",
            "head": format!("{kind:?}").to_lowercase(),
            "device": format!("{device:?}"),
            "batch": batch, "dim": dim, "classes": classes, "threads": threads, "steps": steps,
            "steps_per_s": steps as f64 / total,
            "examples_per_s": (steps * batch) as f64 / total,
            "step_ms_min": 1e3 * timing.min(),
            "cpu_ms_per_step": 1e3 * timing.cpu_per_step,
            "peak_rss_mib": rss_mib("VmHWM:"),
            "params": head.num_trainable_params(),
        })
    );
}
