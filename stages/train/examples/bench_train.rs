//! Training steps per second of the original Adaptor on random pooled pairs, the same loop as
//! `train` (gather a batch, forward with dropout, backward, AdamW at the scheduled rate), without
//! checkpoints. Used by `bench/adaptor/run.sh`; prints one JSON line.
//!
//! `bench_train [--batch 1024] [--dim 768] [--steps 10] [--warmup 2] [--threads 2]
//!  [--full-attention] [--device cpu|cuda] [--bf16] [--pairs N]`
//!
//! `--pairs` (default 4 × batch): the pairs held (on the device) and walked through in epochs
//! of ⌈pairs / batch⌉ steps, the last one smaller, as `train` does; bench/gpu/run.sh uses 200k.

use common::{rss_mib, time_steps, Args};
use tch::Tensor;
use train::optim::{AdamW, DecayPolicy, LinearSchedule};
use train::rng::{permutation, uniform_values};
use train::{Adaptor, AdaptorConfig, InMemoryPairs, Mode, PairSource};

mod common;

fn main() {
    let args = Args::from_env();
    let (batch, dim, steps, warmup, threads) = (
        args.int("--batch", 1024),
        args.int("--dim", 768),
        args.int("--steps", 10),
        args.int("--warmup", 2),
        args.int("--threads", 2),
    );
    let full_attention = args.flag("--full-attention");
    let device = args.device("bench_train");
    let precision = if args.flag("--bf16") {
        train::Precision::Bf16
    } else {
        train::Precision::Fp32
    };
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let base_rss = rss_mib("VmRSS:");
    let n = args.int("--pairs", 4 * batch);
    let steps_per_epoch = (n + batch - 1) / batch;
    let data = InMemoryPairs::pooled(
        Tensor::from_slice(&uniform_values(1, (n * dim) as usize, 0.0, 1.0)).view([n, dim]),
        Tensor::from_slice(&uniform_values(2, (n * 768) as usize, 0.0, 1.0)).view([n, 768]),
    )
    .unwrap()
    .to_device(device);
    let model = Adaptor::new(&AdaptorConfig::original(dim), device, 0).unwrap();
    let mut opt = AdamW::new(
        model.params(),
        (0.9, 0.999),
        1e-8,
        0.01,
        DecayPolicy::WeightsOnly,
    );
    let schedule = LinearSchedule::new(1000, 0.02);
    let mode = Mode {
        full_attention,
        precision,
        ..Mode::TRAIN
    };
    let order = permutation(3, n as usize);
    let timing = time_steps(warmup, steps, |step| {
        let start = (step % steps_per_epoch) * batch;
        let rows = &order[start as usize..(start + batch).min(n) as usize];
        let b = data.batch(rows, device).unwrap();
        opt.zero_grad();
        let out = model.forward(&b, mode).unwrap();
        out.loss.backward();
        opt.step(2e-5 * schedule.factor(step as u64 + 1));
        let _ = out.loss.double_value(&[]);
    });
    let total = timing.total();
    println!(
        "{}",
        serde_json::json!({
            "impl": if full_attention { "rust-tch (full attention)" } else { "rust-tch" },
            "device": format!("{device:?}"), "bf16": precision == train::Precision::Bf16,
            "batch": batch, "dim": dim, "threads": threads, "steps": steps,
            "pairs": n, "steps_per_epoch": steps_per_epoch,
            "steps_per_s": steps as f64 / total,
            "epochs_per_min": 60.0 * steps as f64 / total / steps_per_epoch as f64,
            "step_s_min": timing.min(),
            "cpu_s_per_step": timing.cpu_per_step,
            "base_rss_mib": base_rss,
            "peak_rss_mib": rss_mib("VmHWM:"),
            "params": model.num_trainable_params(),
        })
    );
}
