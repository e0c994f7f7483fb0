//! Training steps per second of the original Adaptor on random pooled pairs, the same loop as
//! `train` (gather a batch, forward with dropout, backward, AdamW at the scheduled rate), without
//! checkpoints. Used by `bench/adaptor/run.sh`; prints one JSON line.
//!
//! `bench_train [--batch 1024] [--dim 768] [--steps 10] [--warmup 2] [--threads 2]
//!  [--full-attention] [--device cpu|cuda] [--bf16]`

use adaptor_train::optim::{AdamW, DecayPolicy, LinearSchedule};
use adaptor_train::rng::{permutation, uniform_values};
use adaptor_train::{Adaptor, AdaptorConfig, InMemoryPairs, Mode, PairSource};
use std::time::Instant;
use tch::{Device, Tensor};

/// `VmHWM` (peak) or `VmRSS` (current) of this process, MiB.
fn rss_mib(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User + system CPU seconds of this process (`/proc/self/stat`, clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 100.0
    };
    tick(11) + tick(12)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: i64| -> i64 {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse().expect("an integer"))
            .unwrap_or(default)
    };
    let (batch, dim, steps, warmup, threads) = (
        get("--batch", 1024),
        get("--dim", 768),
        get("--steps", 10),
        get("--warmup", 2),
        get("--threads", 2),
    );
    let full_attention = args.iter().any(|a| a == "--full-attention");
    let device = args
        .iter()
        .position(|a| a == "--device")
        .map(|i| adaptor_train::config::parse_device(&args[i + 1]).expect("cpu, cuda or cuda:N"))
        .unwrap_or(Device::Cpu);
    if device.is_cuda() && !tch::Cuda::is_available() {
        eprintln!("bench_train: --device {device:?} but CUDA is not available");
        std::process::exit(2);
    }
    let precision = if args.iter().any(|a| a == "--bf16") {
        adaptor_train::Precision::Bf16
    } else {
        adaptor_train::Precision::Fp32
    };
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let base_rss = rss_mib("VmRSS:");
    let n = 4 * batch;
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
    let mut times = Vec::new();
    let mut cpu_start = 0.0;
    for step in 0..(warmup + steps) {
        if step == warmup {
            cpu_start = cpu_seconds();
        }
        let start = Instant::now();
        let rows = &order[((step * batch) % n) as usize..][..batch as usize];
        let b = data.batch(rows, device).unwrap();
        opt.zero_grad();
        let out = model.forward(&b, mode).unwrap();
        out.loss.backward();
        opt.step(2e-5 * schedule.factor(step as u64 + 1));
        let _ = out.loss.double_value(&[]);
        if step >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let total: f64 = times.iter().sum();
    let cpu_per_step = (cpu_seconds() - cpu_start) / steps as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": if full_attention { "rust-tch (full attention)" } else { "rust-tch" },
            "device": format!("{device:?}"), "bf16": precision == adaptor_train::Precision::Bf16,
            "batch": batch, "dim": dim, "threads": threads, "steps": steps,
            "steps_per_s": steps as f64 / total,
            "step_s_min": times.iter().cloned().fold(f64::INFINITY, f64::min),
            "cpu_s_per_step": cpu_per_step,
            "base_rss_mib": base_rss,
            "peak_rss_mib": rss_mib("VmHWM:"),
            "params": model.num_trainable_params(),
        })
    );
}
