//! Classification-head training steps per second over cached features: gather a batch by index,
//! forward in training mode (dropout, BatchNorm on batch statistics), BCE or cross-entropy,
//! backward, AdamW (decay on weight matrices) — the inner step of `train_head`. Used by
//! `bench/heads/run.sh`; prints one JSON line.
//!
//! `bench_heads [--batch 512] [--dim 768] [--classes 1] [--steps 50] [--warmup 5] [--threads 1]
//!  [--linear] [--device cpu|cuda]`

use std::time::Instant;

use adaptor_train::heads::decays;
use adaptor_train::optim::AdamW;
use adaptor_train::rng::{permutation, uniform_values};
use adaptor_train::{ClassificationHead, HeadKind};
use tch::{Device, Tensor};

fn rss_mib(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User + system CPU seconds of this process (`/proc/self/stat`, ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
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
    let (batch, dim, classes, steps, warmup, threads) = (
        get("--batch", 512),
        get("--dim", 768),
        get("--classes", 1),
        get("--steps", 50),
        get("--warmup", 5),
        get("--threads", 1),
    );
    let kind = if args.iter().any(|a| a == "--linear") {
        HeadKind::Linear
    } else {
        HeadKind::Mlp
    };
    let device = args
        .iter()
        .position(|a| a == "--device")
        .map(|i| match args[i + 1].as_str() {
            "cuda" => Device::Cuda(0),
            _ => Device::Cpu,
        })
        .unwrap_or(Device::Cpu);
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
    let (mut times, mut cpu_start) = (Vec::new(), 0.0);
    for step in 0..(warmup + steps) {
        if step == warmup {
            cpu_start = cpu_seconds();
        }
        let start = Instant::now();
        let rows = &order[((step * batch) % n) as usize..][..batch as usize];
        let idx = Tensor::from_slice(rows).to_device(device);
        let x = features.index_select(0, &idx);
        let y = labels.index_select(0, &idx);
        opt.zero_grad();
        let loss = head.loss(&head.forward(&x, true), &y);
        loss.backward();
        opt.step(5e-4);
        let _ = loss.double_value(&[]);
        if step >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let total: f64 = times.iter().sum();
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-tch",
            "head": format!("{kind:?}").to_lowercase(),
            "device": format!("{device:?}"),
            "batch": batch, "dim": dim, "classes": classes, "threads": threads, "steps": steps,
            "steps_per_s": steps as f64 / total,
            "examples_per_s": (steps * batch) as f64 / total,
            "step_ms_min": 1e3 * times.iter().cloned().fold(f64::INFINITY, f64::min),
            "cpu_ms_per_step": 1e3 * (cpu_seconds() - cpu_start) / steps as f64,
            "peak_rss_mib": rss_mib("VmHWM:"),
            "params": head.num_trainable_params(),
        })
    );
}
