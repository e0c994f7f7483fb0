//! What the benchmark examples (`bench_train`, `bench_heads`) share: their command line, the
//! timed step loop after a warm-up, and this process's CPU time and memory from `/proc`.

use std::time::Instant;

use tch::Device;

/// `--name value` options and `--flag`s.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Args(std::env::args().collect())
    }

    /// The integer after `name`, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.value(name)
            .map(|v| v.parse().expect("an integer"))
            .unwrap_or(default)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// `--device cpu|cuda|cuda:N` (default cpu); exits with status 2 when CUDA is asked for but
    /// not available.
    pub fn device(&self, program: &str) -> Device {
        let device = self
            .value("--device")
            .map(|d| train::config::parse_device(d).expect("cpu, cuda or cuda:N"))
            .unwrap_or(Device::Cpu);
        if device.is_cuda() && !tch::Cuda::is_available() {
            eprintln!("{program}: --device {device:?} but CUDA is not available");
            std::process::exit(2);
        }
        device
    }

    fn value(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        Some(
            self.0
                .get(i + 1)
                .expect("a value after the option")
                .as_str(),
        )
    }
}

/// Wall-clock seconds of each measured step, and CPU seconds per measured step.
pub struct Timing {
    pub times: Vec<f64>,
    pub cpu_per_step: f64,
}

impl Timing {
    pub fn total(&self) -> f64 {
        self.times.iter().sum()
    }

    pub fn min(&self) -> f64 {
        self.times.iter().cloned().fold(f64::INFINITY, f64::min)
    }
}

/// Runs `step(0..warmup + steps)`, timing the steps after the first `warmup`.
pub fn time_steps(warmup: i64, steps: i64, mut step: impl FnMut(i64)) -> Timing {
    let (mut times, mut cpu_start) = (Vec::new(), 0.0);
    for i in 0..(warmup + steps) {
        if i == warmup {
            cpu_start = cpu_seconds();
        }
        let start = Instant::now();
        step(i);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Timing {
        times,
        cpu_per_step: (cpu_seconds() - cpu_start) / steps as f64,
    }
}

/// `VmHWM` (peak) or `VmRSS` (current) of this process, MiB.
pub fn rss_mib(field: &str) -> f64 {
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
