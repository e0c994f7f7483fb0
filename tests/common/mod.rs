//! Shared by the end-to-end tests: the `adaptor` binary run in a temporary folder with its own
//! cache ([`Case`]), waiting on a condition, walking a folder, the repository, the real MiniLM
//! folder and the smaller demo; `moto` for the tests against a real S3-compatible server.
#![allow(dead_code)]

pub mod moto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `adaptor` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_adaptor"))
}

/// `adaptor ARGS` to run in `dir`, with its cache in `dir/cache` (not the user's).
pub fn adaptor(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(dir)
        .env("ADAPTOR_CACHE_DIR", dir.join("cache"));
    c
}

/// What a finished process wrote: stdout, then stderr.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `adaptor ARGS` in `dir`, which must succeed: what it wrote (stdout, then stderr).
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = adaptor(dir, args).output().unwrap();
    let text = text(&out);
    assert!(out.status.success(), "adaptor {args:?} failed:\n{text}");
    text
}

/// A temporary folder to run `adaptor` in, with extra environment variables (say, those that
/// point it at the test's S3 server) for every command.
pub struct Case {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Case {
    pub fn new() -> Case {
        Case::with_env(Vec::new())
    }

    pub fn with_env(env: Vec<(String, String)>) -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            env,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file of the case (creating its folders); its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = adaptor(self.path(), args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed: what it wrote (stdout, then stderr).
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "adaptor {args:?} failed:\n{}",
            text(&out)
        );
        text(&out)
    }

    /// Runs a command: its exit code and what it wrote.
    pub fn go(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = self.run(args);
        (out.status.code(), text(&out))
    }
}

/// Polls `done` every 50 ms; fails the test with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what} (after {limit:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The lines of a text file, sorted (what concurrent writers appended, in a fixed order).
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The real all-MiniLM-L6-v2 folder (scripts/test-assets-encoders.sh fetches it).
pub fn minilm() -> PathBuf {
    let root = std::env::var_os("ADAPTOR_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/test-assets"));
    let dir = root.join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/test-assets-encoders.sh",
        dir.display()
    );
    dir
}
/// `manifests/demo.toml`, smaller (fewer images, one seed, two label fractions, fewer epochs),
/// with absolute backbone paths so that it runs from any folder.
pub fn small_demo() -> String {
    let demo = std::fs::read_to_string(repo().join("manifests/demo.toml")).unwrap();
    [
        ("n = 600", "n = 300".to_string()),
        ("n = 120", "n = 40".to_string()),
        ("seed = [0, 1, 2]", "seed = [0]".to_string()),
        (
            "fraction = [0.01, 0.1, 1.0]",
            "fraction = [0.1, 1.0]".to_string(),
        ),
        ("epochs = 20,", "epochs = 10,".to_string()),
        ("epochs = 8\n", "epochs = 2\n".to_string()),
        (
            "\"../.cache/test-assets/all-MiniLM-L6-v2\"",
            format!("\"{}\"", minilm().display()),
        ),
        (
            "\"../data/encoders/dinov2\"",
            format!("\"{}/data/encoders/dinov2\"", repo().display()),
        ),
    ]
    .iter()
    .fold(demo, |text, (from, to)| {
        assert!(text.contains(from), "demo.toml no longer contains `{from}`");
        text.replace(from, to)
    })
}

/// The artifact folder of `instance` in a local store (read from the `_manifest.json` files).
pub fn artifact_of(store: &Path, kind: &str, instance: &str) -> PathBuf {
    std::fs::read_dir(store.join(kind))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_to_string(p.join("_manifest.json")).is_ok_and(|m| {
                serde_json::from_str::<serde_json::Value>(&m).unwrap()["instance"] == instance
            })
        })
        .unwrap_or_else(|| panic!("no complete artifact of {instance} in {}", store.display()))
}

/// A synthetic MIMIC-CXR records table through the real MiniLM; `SHARDS` is replaced by a
/// `shards = N` line or nothing. Batches of one text, so that a batch never spans two shards and
/// the vectors do not depend on where the shards cut.
pub const SHARDED_ENCODE: &str = r#"
[backbones.minilm]
kind = "bert"
weights = "MINILM"

[stages.synth]
kind = "synth"
params = { dataset = "mimic-cxr", n = 12, seed = 3, image_size = 64 }

[stages.ingest]
kind = "ingest"
inputs.raw = "synth"
params = { verify = "exists" }

[stages.enc]
kind = "encode-text"
inputs.records = "ingest"
inputs.backbone = "backbones.minilm"
params = { batch_size = 1, pooling = "mean", device = "cpu", max_length = 64 }
SHARDS

[executor.slurm]
cpus = 1
"#;
