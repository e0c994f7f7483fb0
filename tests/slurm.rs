//! The Slurm executor against a real single-node Slurm (slurmctld + slurmd + munge) that this test
//! starts in a scratch folder and stops at the end (`scripts/slurm-cluster.sh`). The scenarios of
//! one test run in sequence so they share one cluster; the tests take turns (one cluster at a time).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;

use common::{artifact_of, minilm, repo, SHARDED_ENCODE as ENCODE};

/// One throwaway cluster at a time on this machine.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        for tool in ["slurmctld", "slurmd", "sbatch", "munged"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap()
                .status
                .success();
            assert!(
                found,
                "`{tool}` is not installed: run `scripts/slurm-cluster.sh install` (as root)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        // Two free ports in a row for slurmctld and slurmd.
        let port = loop {
            let p = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let out = Command::new(repo().join("scripts/slurm-cluster.sh"))
            .args(["start", &dir.path().join("cluster").to_string_lossy()])
            .env("SLURM_PORT_BASE", port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("cluster/slurm.conf");
        Cluster { dir, conf }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/slurm-cluster.sh"))
            .args(["stop", &self.dir.path().join("cluster").to_string_lossy()])
            .output();
    }
}

struct Case<'a> {
    cluster: &'a Cluster,
    dir: tempfile::TempDir,
}

impl<'a> Case<'a> {
    fn new(cluster: &'a Cluster, manifest: &str) -> Case<'a> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.toml"), manifest).unwrap();
        std::fs::create_dir_all(dir.path().join("raw")).unwrap();
        std::fs::write(dir.path().join("raw/in.txt"), "raw data\n").unwrap();
        Case { cluster, dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::adaptor(self.path(), args);
        c.env("SLURM_CONF", &self.cluster.conf);
        c
    }
    fn run(&self, args: &[&str]) -> (Output, String) {
        let out = self.cmd(args).output().unwrap();
        let text = common::text(&out);
        (out, text)
    }
    /// Polls `adaptor status` every 200 ms until `ready` accepts its output; fails with `what`
    /// and the last output after `limit`.
    fn wait_for_status(&self, limit: Duration, what: &str, ready: impl Fn(&str) -> bool) {
        let t0 = Instant::now();
        loop {
            let (_, status) = self.run(&["status", "m.toml"]);
            if ready(&status) {
                return;
            }
            assert!(t0.elapsed() < limit, "{what}: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    /// Polls squeue until no job of the cluster is pending, running or completing.
    fn wait_until_no_job_is_active(&self, limit: Duration) {
        let t0 = Instant::now();
        while self
            .squeue("%T")
            .lines()
            .any(|s| matches!(s, "PENDING" | "RUNNING" | "COMPLETING"))
        {
            assert!(
                t0.elapsed() < limit,
                "jobs still active after cancel: {}",
                self.squeue("%i %j %T")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn squeue(&self, fmt: &str) -> String {
        let out = Command::new("squeue")
            .args(["-h", "-t", "all", "-o", fmt])
            .env("SLURM_CONF", &self.cluster.conf)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// (kind/key → sorted file digests) of every complete artifact in a local store.
fn artifacts(store: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for kind in std::fs::read_dir(store).unwrap().flatten() {
        let name = kind.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') {
            continue;
        }
        for art in std::fs::read_dir(kind.path()).unwrap().flatten() {
            let Ok(text) = std::fs::read_to_string(art.path().join("_manifest.json")) else {
                continue;
            };
            let m: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut files: Vec<(String, String)> = m["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["path"].as_str().unwrap().to_string(),
                        f["blake3"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            files.sort();
            out.insert(
                format!("{name}/{}", art.file_name().to_string_lossy()),
                files,
            );
        }
    }
    out
}

const GRID: &str = r#"
[datasets.raw]
kind = "text"
root = "raw"

[matrix]
seed = [0, 1, 2]

[stages.prep]
kind = "command"
inputs.deps = "datasets.raw"
params.run = "tr a-z A-Z < $IN_DEPS/in.txt > $OUT/prep.txt"

[stages.train]
kind = "command"
foreach = ["seed"]
inputs.deps = "prep"
params = { run = "cat $IN_DEPS/prep.txt > $OUT/model.txt; echo seed=$VAR_SEED >> $OUT/model.txt", vars = { seed = "${seed}" } }

[stages.report]
kind = "command"
inputs.deps = "train[*]"
params.run = "cat $IN_DEPS_0/model.txt $IN_DEPS_1/model.txt $IN_DEPS_2/model.txt > $OUT/report.txt"

[executor.slurm]
cpus = 1
extra = ["--comment=adaptor-test"]

[executor.slurm.resources.command]
time = "00:10:00"
"#;

#[test]
fn slurm_executor_on_a_real_cluster() {
    let _turn = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();

    // 1. Same keys and same artifacts as the local executor; a second run submits nothing.
    let case = Case::new(&cluster, GRID);
    let (out, text) = case.run(&["run", "m.toml", "--store", "local-store"]);
    assert!(out.status.success(), "{text}");
    let t0 = Instant::now();
    let (out, text) = case.run(&[
        "run",
        "m.toml",
        "--executor",
        "slurm",
        "--store",
        "slurm-store",
    ]);
    assert!(out.status.success(), "{text}");
    let slurm_secs = t0.elapsed().as_secs_f64();
    assert!(
        text.contains("5 ran") && text.contains("submitted as slurm job"),
        "{text}"
    );
    assert_eq!(
        artifacts(&case.path().join("local-store")),
        artifacts(&case.path().join("slurm-store"))
    );
    let manifest_of_report = std::fs::read_dir(case.path().join("slurm-store/command"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path().join("_manifest.json")).unwrap())
        .find(|m| m.contains("\"instance\": \"report\""))
        .unwrap();
    assert!(
        manifest_of_report.contains("\"job\": \"slurm job "),
        "{manifest_of_report}"
    );
    let jobs_before = case.squeue("%i").lines().count();
    let (out, text) = case.run(&[
        "run",
        "m.toml",
        "--executor",
        "slurm",
        "--store",
        "slurm-store",
    ]);
    assert!(
        out.status.success() && text.contains("0 ran, 5 up to date"),
        "{text}"
    );
    assert_eq!(
        case.squeue("%i").lines().count(),
        jobs_before,
        "a no-op run submits nothing"
    );
    eprintln!("slurm executor: 5 instances in {slurm_secs:.1}s");

    // 2. A failing stage: its dependents are not run, and the error names the job and its output.
    let failing = GRID.replace(
        "echo seed=$VAR_SEED >> $OUT/model.txt",
        "test $VAR_SEED != 1 || { echo bad seed >&2; exit 4; }; echo ok > $OUT/model.txt",
    );
    let case2 = Case::new(&cluster, &failing);
    let (out, text) = case2.run(&["run", "m.toml", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error: train[seed=1] failed: command"),
        "{text}"
    );
    assert!(
        text.contains("exited with status 4: bad seed (slurm job "),
        "{text}"
    );
    let job_out = job_output(&text);
    assert!(
        Path::new(&job_out).is_file(),
        "the job's output file exists: {job_out}"
    );
    assert!(
        text.contains("not run: report (upstream train[seed=1] failed)"),
        "{text}"
    );
    let (_, status) = case2.run(&["status", "m.toml"]);
    assert!(
        status.contains("failed") && status.contains("missing"),
        "{status}"
    );
    // Fixed: only the failed instance and its dependent are resubmitted.
    std::fs::write(case2.path().join("m.toml"), GRID).unwrap();
    let (out, text) = case2.run(&["run", "m.toml", "--executor", "slurm", "--dry-run"]);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("would run").count(), 4, "{text}"); // train x3 changed params + report

    // 3. Two runs at once never submit the same key twice.
    let case3 = Case::new(&cluster, &GRID.replace("tr a-z A-Z", "sleep 1; tr a-z A-Z"));
    let jobs_before = case3.squeue("%i").lines().count();
    let a = case3
        .cmd(&["run", "m.toml", "--executor", "slurm", "--detach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = case3
        .cmd(&["run", "m.toml", "--executor", "slurm", "--detach"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{a:?} {b:?}");
    assert_eq!(
        case3.squeue("%i").lines().count() - jobs_before,
        5,
        "each of the 5 keys submitted once"
    );
    let (_, status) = case3.run(&["status", "m.toml"]);
    assert!(
        status.contains("queued") || status.contains("running"),
        "{status}"
    );
    // Following the detached jobs to the end: the second run reuses them.
    let (out, text) = case3.run(&["run", "m.toml", "--executor", "slurm"]);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("submitted as"),
        "nothing is submitted twice: {text}"
    );
    assert!(text.contains("already queued as slurm job"), "{text}");
    let (_, status) = case3.run(&["status", "m.toml"]);
    assert!(status.contains("all 5 instance(s) up to date"), "{status}");

    // 4. Ctrl-C cancels the jobs the run submitted; nothing is left complete or queued.
    let case4 = Case::new(
        &cluster,
        &GRID.replace("tr a-z A-Z", "sleep 30; tr a-z A-Z"),
    );
    let mut child = case4
        .cmd(&["run", "m.toml", "--executor", "slurm"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    case4.wait_for_status(
        Duration::from_secs(30),
        "the first job never started",
        |status| status.contains("running"),
    );
    unsafe { kill(child.id() as i32, 2) };
    let status_code = child.wait().unwrap();
    assert!(!status_code.success());
    case4.wait_until_no_job_is_active(Duration::from_secs(20));
    let (_, status) = case4.run(&["status", "m.toml"]);
    assert!(
        !status.contains("up-to-date") && !status.contains("queued") && !status.contains("running"),
        "{status}"
    );
}

/// The `slurm job N` of every complete artifact of a local store, by instance.
fn jobs_by_instance(store: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kind in std::fs::read_dir(store).unwrap().flatten() {
        for art in std::fs::read_dir(kind.path()).unwrap().flatten() {
            let Ok(text) = std::fs::read_to_string(art.path().join("_manifest.json")) else {
                continue;
            };
            let m: serde_json::Value = serde_json::from_str(&text).unwrap();
            out.insert(
                m["instance"].as_str().unwrap().to_string(),
                m["job"].as_str().unwrap_or("").to_string(),
            );
        }
    }
    out
}

#[test]
fn slurm_job_groups_build_their_members_in_order_in_one_job() {
    let _turn = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    // Two `command` instances per job: {prep, train[0]}, {train[1], train[2]}, {report} (alone).
    // train[seed=1] fails until the file `ok` exists in the case folder.
    let grouped = |dir: &Path| {
        GRID.replace(
            "echo seed=$VAR_SEED >> $OUT/model.txt",
            &format!(
                "echo seed=$VAR_SEED >> $OUT/model.txt; test $VAR_SEED != 1 || test -e {}/ok || {{ echo bad seed >&2; exit 4; }}",
                dir.display()
            ),
        )
        .replace("time = \"00:10:00\"", "time = \"00:10:00\"\ngroup = 2")
    };
    let case = Case::new(&cluster, "");
    std::fs::write(case.path().join("m.toml"), grouped(case.path())).unwrap();
    std::fs::write(case.path().join("ok"), "").unwrap();
    let jobs_before = case.squeue("%i").lines().count();
    let (out, text) = case.run(&["run", "m.toml", "--executor", "slurm", "--store", "s"]);
    assert!(out.status.success() && text.contains("5 ran"), "{text}");
    assert_eq!(case.squeue("%i").lines().count() - jobs_before, 3, "{text}");
    let jobs = jobs_by_instance(&case.path().join("s"));
    assert_eq!(jobs.len(), 5, "{jobs:?}");
    assert!(
        jobs.values().all(|j| j.starts_with("slurm job ")),
        "{jobs:?}"
    );
    // prep and its dependent train[seed=0] were built by one job, in dependency order
    assert_eq!(jobs["prep"], jobs["train[seed=0]"], "{jobs:?}");
    assert_eq!(jobs["train[seed=1]"], jobs["train[seed=2]"], "{jobs:?}");
    assert_ne!(jobs["prep"], jobs["train[seed=1]"], "{jobs:?}");
    assert_ne!(jobs["report"], jobs["train[seed=1]"], "{jobs:?}");
    // the same artifacts as the local executor
    let (out, text) = case.run(&["run", "m.toml", "--store", "local"]);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        artifacts(&case.path().join("local")),
        artifacts(&case.path().join("s"))
    );

    // A failing member fails alone: its group mate train[seed=2] is built, its dependent report
    // (in another job) is not run; a re-run submits only what is missing.
    let case = Case::new(&cluster, "");
    std::fs::write(case.path().join("m.toml"), grouped(case.path())).unwrap();
    let (out, text) = case.run(&["run", "m.toml", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error: train[seed=1] failed: command")
            && text.contains("exited with status 4: bad seed (slurm job "),
        "{text}"
    );
    assert!(
        text.contains("not run: report (upstream train[seed=1] failed)"),
        "{text}"
    );
    assert!(text.contains("3 ran"), "{text}");
    let (_, status) = case.run(&["status", "m.toml"]);
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("train[seed=2]").contains("up-to-date"), "{status}");
    assert!(line("train[seed=1]").contains("failed"), "{status}");
    assert!(line("report").contains("missing"), "{status}");
    std::fs::write(case.path().join("ok"), "").unwrap();
    let jobs_before = case.squeue("%i").lines().count();
    let (out, text) = case.run(&["run", "m.toml", "--executor", "slurm"]);
    assert!(
        out.status.success() && text.contains("2 ran, 3 up to date"),
        "{text}"
    );
    // train[seed=1] and then its dependent report, in one job
    assert_eq!(case.squeue("%i").lines().count() - jobs_before, 1, "{text}");
    let jobs = jobs_by_instance(&case.path().join("artifacts"));
    assert_eq!(jobs["train[seed=1]"], jobs["report"], "{jobs:?}");
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// The `adaptor-torch` worker the `adaptor` binary starts: $ADAPTOR_TORCH, else the one built next
/// to it (`cargo build -p adaptor-torch`, or `cargo test --workspace`, builds it).
fn torch_worker() -> PathBuf {
    let p = std::env::var_os("ADAPTOR_TORCH").map_or_else(
        || Path::new(env!("CARGO_BIN_EXE_adaptor")).with_file_name("adaptor-torch"),
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p adaptor-torch` (after `source scripts/env.sh`)",
        p.display()
    );
    p
}

/// The job's output file that a failure message names (`... (job output PATH)`).
fn job_output(text: &str) -> String {
    text.split("job output ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_sharded_encode_over_a_job_array_equals_the_unsharded_table() {
    let worker = torch_worker();
    let manifest = ENCODE.replace("MINILM", &minilm().to_string_lossy());
    let _turn = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();

    // The unsharded table, by the local executor.
    let whole = Case::new(&cluster, &manifest.replace("SHARDS", ""));
    let t0 = Instant::now();
    let (out, text) = whole.run(&["run", "m.toml", "-j", "1", "--store", "store"]);
    assert!(out.status.success(), "{text}");
    let local_secs = t0.elapsed().as_secs_f64();

    // Three shards as one job array, then the merge, on Slurm.
    let case = Case::new(&cluster, &manifest.replace("SHARDS", "shards = 3"));
    let jobs_before = case.squeue("%i").lines().count();
    let t0 = Instant::now();
    let (out, text) = case.run(&["run", "m.toml", "--executor", "slurm", "--store", "store"]);
    assert!(out.status.success(), "{text}");
    let slurm_secs = t0.elapsed().as_secs_f64();
    assert!(text.contains("6 ran"), "{text}");
    // synth, ingest, one array of three tasks, the merge: four submissions, six squeue lines.
    let squeue = case.squeue("%i %j");
    assert_eq!(squeue.lines().count() - jobs_before, 6, "{squeue}");
    let array: Vec<&str> = squeue
        .lines()
        .filter(|l| l.contains("adaptor:enc[shards]"))
        .collect();
    assert_eq!(array.len(), 3, "one array task per shard: {squeue}");
    let array_id = array[0].split('_').next().unwrap();
    assert!(
        array.iter().all(|l| l.starts_with(&format!("{array_id}_"))),
        "{squeue}"
    );
    for i in 0..3 {
        assert!(
            text.contains(&format!("enc[shard={i}/3]"))
                && text.contains(&format!("slurm job {array_id}_{i}")),
            "{text}"
        );
    }
    let merged = artifact_of(&case.path().join("store"), "encode-text", "enc");
    let manifest_json = std::fs::read_to_string(merged.join("_manifest.json")).unwrap();
    assert!(manifest_json.contains("\"shards\""), "{manifest_json}");
    let shard = artifact_of(&case.path().join("store"), "encode-text", "enc[shard=1/3]");
    assert!(
        std::fs::read_to_string(shard.join("_manifest.json"))
            .unwrap()
            .contains(&format!("\"job\": \"slurm job {array_id}_1\"")),
        "the shard's manifest names its array task"
    );
    let unsharded = artifact_of(&whole.path().join("store"), "encode-text", "enc");
    let a = std::fs::read(merged.join("embeddings.parquet")).unwrap();
    let b = std::fs::read(unsharded.join("embeddings.parquet")).unwrap();
    assert!(
        a == b,
        "the merged table is not byte-identical to the unsharded one ({} vs {} bytes)",
        a.len(),
        b.len()
    );

    // Up to date: status names the shards, and a second run submits nothing.
    let (_, status) = case.run(&["status", "m.toml", "--store", "store"]);
    assert!(
        status.contains("enc[shard=2/3]") && status.contains("all 6 instance(s) up to date"),
        "{status}"
    );
    let before = case.squeue("%i").lines().count();
    let (out, text) = case.run(&["run", "m.toml", "--executor", "slurm", "--store", "store"]);
    assert!(
        out.status.success() && text.contains("0 ran, 6 up to date"),
        "{text}"
    );
    assert_eq!(
        case.squeue("%i").lines().count(),
        before,
        "a no-op run submits nothing"
    );

    // A failing array task: the error names the task and its output file; the merge is not run.
    let bad = Case::new(
        &cluster,
        &manifest
            .replace("SHARDS", "shards = 2")
            .replace("max_length = 64", "max_length = 64, text_column = \"nope\""),
    );
    let (out, text) = bad.run(&["run", "m.toml", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error: enc[shard=0/2] failed: ") && text.contains("no column `nope`"),
        "{text}"
    );
    let job_out = job_output(&text);
    assert!(
        job_out.ends_with("_0.out") || job_out.ends_with("_1.out"),
        "{job_out}"
    );
    assert!(
        Path::new(&job_out).is_file(),
        "the task's output file exists: {job_out}"
    );
    assert!(text.contains("not run: enc (upstream enc[shard="), "{text}");

    // Ctrl-C while the array runs cancels the array; nothing is left queued, running or complete.
    // A stand-in worker that only sleeps keeps the tasks running (jobs inherit the environment).
    let slow = Case::new(&cluster, &manifest.replace("SHARDS", "shards = 2"));
    let sleeper = slow.path().join("sleepy-worker.sh");
    std::fs::write(&sleeper, "#!/bin/sh\nsleep 60\nexit 1\n").unwrap();
    std::fs::set_permissions(
        &sleeper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut child = slow
        .cmd(&["run", "m.toml", "--executor", "slurm"])
        .env("ADAPTOR_TORCH", &sleeper)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    slow.wait_for_status(Duration::from_secs(60), "no shard ever started", |status| {
        status
            .lines()
            .any(|l| l.starts_with("running") && l.contains("enc[shard="))
    });
    unsafe { kill(child.id() as i32, 2) };
    assert!(!child.wait().unwrap().success());
    slow.wait_until_no_job_is_active(Duration::from_secs(20));
    let (_, status) = slow.run(&["status", "m.toml"]);
    assert!(
        status
            .lines()
            .filter(|l| l.contains("enc"))
            .all(|l| l.starts_with("missing")),
        "{status}"
    );
    eprintln!(
        "sharded encode: unsharded locally {local_secs:.1}s, 3 shards + merge on slurm {slurm_secs:.1}s (worker {})",
        worker.display()
    );
}
