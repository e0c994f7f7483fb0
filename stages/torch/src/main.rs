//! `adaptor-torch`: the process that links libtorch. The `adaptor` runner starts it for each torch
//! stage instance (`run-stage`: one JSON job on stdin, JSON lines on stdout), and forwards
//! `adaptor embed ...` to it. `convert-resnet-ae` converts the published torchxrayvision
//! checkpoint; `env` says what libtorch this process sees (for GPU machines).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use adaptor_torch::adhoc::{self, EmbedImage, EmbedText};
use adaptor_torch::bert::TextPooling;
use adaptor_torch::encoder::{pick_device, pick_precision, Reporter};
use adaptor_torch::preprocess::Normalize;
use clap::{Parser, Subcommand};
use pipeline::protocol::{Job, JsonLinesSink, WorkerMessage};

#[derive(Parser)]
#[command(
    name = "adaptor-torch",
    version,
    about = "The libtorch worker of adaptor: encode stages, embed, conversions"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one stage instance: a JSON job on stdin, JSON lines on stdout (started by `adaptor`).
    RunStage,
    /// Embeds texts or images named on the command line into a Parquet table.
    Embed {
        #[command(subcommand)]
        what: EmbedCmd,
    },
    /// Converts torchxrayvision's ResNet autoencoder checkpoint (`.pt`) into a backbone folder
    /// (`model.safetensors` + `config.json`).
    ConvertResnetAe {
        /// The published file, e.g. nihpcrsnamimic_ch-resnet101-2-ae-test2-elastic-e250.pt
        #[arg(long)]
        input: PathBuf,
        /// The backbone folder to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Prints the libtorch this process loaded, CUDA availability and thread counts.
    Env,
}

#[derive(clap::Args)]
struct RunArgs {
    /// auto (CUDA when available), cpu or cuda
    #[arg(long, default_value = "auto")]
    device: String,
    /// fp32 or bf16
    #[arg(long, default_value = "fp32")]
    precision: String,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// CPU threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Untimed forward passes on one batch before the loop, so that the logged rates leave out
    /// CUDA's start-up (bench/gpu/run.sh). Hidden: a benchmark's option, not `adaptor embed`'s.
    #[arg(long, default_value_t = 0, hide = true)]
    warmup: usize,
}

impl RunArgs {
    /// The settings both `embed` commands share, parsed as the stages parse them (one device
    /// parser), with libtorch's threads set: (threads, device, precision).
    fn apply(&self) -> Result<(usize, tch::Device, tch::Kind), String> {
        let t = threads(self.threads);
        adaptor_torch::encode::set_threads(t);
        let device = pick_device(&self.device).map_err(|e| e.to_string())?;
        let precision = pick_precision(&self.precision).map_err(|e| e.to_string())?;
        Ok((t, device, precision))
    }
}

#[derive(Subcommand)]
enum EmbedCmd {
    /// One text per line of FILE; `key` is the line number from 0.
    Text {
        /// A BERT-family Hugging Face folder.
        #[arg(long)]
        backbone: PathBuf,
        #[arg(long, default_value = "pooler", value_parser = ["pooler", "cls", "mean", "tokens"])]
        pooling: String,
        #[arg(long, default_value_t = 112)]
        max_length: usize,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Image files (JPEG, PNG, DICOM); `key` is the file name.
    Image {
        /// A DINOv2 folder or a ResNet-AE folder.
        #[arg(long)]
        backbone: PathBuf,
        /// dinov2 or resnet-ae (default: from the folder's config.json)
        #[arg(long, value_parser = ["dinov2", "resnet-ae"])]
        kind: Option<String>,
        #[arg(long, default_value = "auto", value_parser = ["auto", "cls", "mean", "tokens"])]
        pooling: String,
        #[arg(long, default_value = "imagenet", value_parser = ["imagenet", "half"])]
        normalize: String,
        #[arg(long, default_value_t = 256)]
        resize: u32,
        #[arg(long, default_value_t = 224)]
        image_size: u32,
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// Progress of `embed` on stderr; stdout keeps the one-line result.
struct Terminal {
    started: Instant,
}

impl Reporter for Terminal {
    fn log(&self, line: &str) {
        eprintln!("{line}");
    }

    fn progress(&self, done: u64, total: u64, unit: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        eprint!("\r{done}/{total} {unit} ({rate:.1}/s)   ");
        if done == total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

fn threads(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Image decode limits (README, "Bad input"); the runner passes its environment on.
    let var = |name| std::env::var(name).ok();
    match stages::images::DecodeLimits::with_overrides(
        var(stages::images::DecodeLimits::PIXELS_VAR).as_deref(),
        var(stages::images::DecodeLimits::BYTES_VAR).as_deref(),
    ) {
        Ok(limits) => limits.set(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Cmd::RunStage => return run_stage(),
        Cmd::Embed { what } => embed(what),
        Cmd::ConvertResnetAe { input, output } => adhoc::convert_resnet_ae(&input, &output)
            .map(|msg| println!("{msg}"))
            .map_err(|e| e.to_string()),
        Cmd::Env => {
            env();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn embed(what: EmbedCmd) -> Result<(), String> {
    let rep = Terminal {
        started: Instant::now(),
    };
    let (n, out) = match what {
        EmbedCmd::Text {
            backbone,
            pooling,
            max_length,
            input,
            output,
            run,
        } => {
            let (threads, device, precision) = run.apply()?;
            let a = EmbedText {
                backbone,
                pooling: TextPooling::parse(&pooling).expect("clap checked"),
                max_length,
                input,
                output: output.clone(),
                batch_size: run.batch_size,
                device,
                precision,
                threads,
                warmup: run.warmup,
            };
            (
                adhoc::embed_text(&a, &rep).map_err(|e| e.to_string())?,
                output,
            )
        }
        EmbedCmd::Image {
            backbone,
            kind,
            pooling,
            normalize,
            resize,
            image_size,
            input,
            output,
            run,
        } => {
            let (threads, device, precision) = run.apply()?;
            let a = EmbedImage {
                backbone,
                kind,
                pooling,
                normalize: Normalize::parse(&normalize).expect("clap checked"),
                resize,
                image_size,
                inputs: input,
                output: output.clone(),
                batch_size: run.batch_size,
                device,
                precision,
                threads,
                warmup: run.warmup,
            };
            (
                adhoc::embed_image(&a, &rep).map_err(|e| e.to_string())?,
                output,
            )
        }
    };
    println!("wrote {n} rows to {}", out.display());
    Ok(())
}

/// The worker protocol (`pipeline::protocol`): any failure, panics included, becomes one
/// `{"error": ...}` line and exit status 1.
fn run_stage() -> ExitCode {
    let sink = Arc::new(JsonLinesSink::stdout());
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            let job = Job::read(std::io::stdin().lock())?;
            let kind = job.kind.clone();
            adaptor_torch::encode::set_threads(job.threads);
            // Remote stores (inputs streamed from S3): the credentials and endpoint this process
            // inherited, read here only and passed down as values.
            let aws = std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .collect();
            let ctx = job
                .into_context(sink.clone(), Arc::new(AtomicBool::new(false)))
                .with_remote_access(aws);
            let result = adaptor_torch::kinds::run(&kind, &ctx).map_err(|e| e.to_string());
            // The stage's peak resident memory, for its log (the scale benchmark and the memory
            // tests read it): what the budget bounds, besides libtorch's own footprint.
            if let Some(peak) = peak_resident_bytes() {
                ctx.log(format!(
                    "worker peak resident memory (VmHWM): {} ({peak} bytes; budget {})",
                    pipeline::stage::format_bytes(peak),
                    pipeline::stage::format_bytes(ctx.memory())
                ));
            }
            result
        }));
    let err = match result {
        Ok(Ok(())) => return ExitCode::SUCCESS,
        Ok(Err(e)) => e,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            format!("the torch worker panicked: {msg}")
        }
    };
    sink.send(&WorkerMessage::Error(err));
    ExitCode::FAILURE
}

/// This process's peak resident set size (`VmHWM` of /proc/self/status), in bytes.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// A shared library this process mapped (e.g. `libtorch_cpu.so`), from /proc/self/maps.
fn loaded(lib: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let suffix = format!("/{lib}");
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with(&suffix))
        .map(PathBuf::from)
}

fn env() {
    println!(
        "adaptor-torch {} (tch 0.24, built against PyTorch 2.11.0; rpath {})",
        env!("CARGO_PKG_VERSION"),
        env!("ADAPTOR_TORCH_LIBDIR")
    );
    match loaded("libtorch_cpu.so") {
        Some(p) => {
            // torch/lib/libtorch_cpu.so → torch/version.py holds the wheel's version.
            let version = p
                .parent()
                .and_then(|l| l.parent())
                .and_then(|t| std::fs::read_to_string(t.join("version.py")).ok())
                .and_then(|v| {
                    v.lines().find_map(|l| {
                        l.strip_prefix("__version__ = ")
                            .map(|s| s.trim_matches(['\'', '"']).to_string())
                    })
                });
            println!(
                "libtorch: {} (torch {})",
                p.display(),
                version.as_deref().unwrap_or("version unknown")
            );
        }
        None => println!("libtorch: not found in /proc/self/maps"),
    }
    // libtorch_cuda.so registers the CUDA kernels; it is only mapped when libtorch.so stayed
    // NEEDED (the build script's --no-as-needed).
    println!(
        "libtorch_cuda.so: {}",
        loaded("libtorch_cuda.so").map_or("not loaded".to_string(), |p| format!(
            "loaded ({})",
            p.display()
        ))
    );
    let cuda = tch::Cuda::is_available();
    println!(
        "cuda: {} ({} devices, cudnn {}, built with cuda {})",
        if cuda { "available" } else { "not available" },
        tch::Cuda::device_count(),
        tch::Cuda::cudnn_is_available(),
        tch::utils::has_cuda()
    );
    println!(
        "threads: intra-op {}, inter-op {} (of {} cores)",
        tch::get_num_threads(),
        tch::get_num_interop_threads(),
        threads(None)
    );
    println!(
        "cpu: mkl {}, mkldnn {}, openmp {}",
        tch::utils::has_mkl(),
        tch::utils::has_mkldnn(),
        tch::utils::has_openmp()
    );
    if cuda {
        let t0 = Instant::now();
        let a = tch::Tensor::randn([2048, 2048], (tch::Kind::BFloat16, tch::Device::Cuda(0)));
        let s = a.matmul(&a).sum(tch::Kind::Float).double_value(&[]);
        println!(
            "cuda check: a bf16 2048² matmul on cuda:0 in {:.3} s (sum {s:.1})",
            t0.elapsed().as_secs_f64()
        );
    }
}
