//! No stage process outlives its runner: `kill -9`, SIGTERM and SIGHUP sent to the real `adaptor`
//! binary while a `command` stage (a shell with a background child) or a torch stage (the real
//! `adaptor-torch` worker encoding with the real MiniLM) runs. Processes are found in /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{adaptor, wait_until};

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
const SIGHUP: i32 = 1;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// (pid, parent pid, process group, state, command name) of every process.
fn processes() -> Vec<(u32, u32, u32, String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        out.push((
            pid,
            f[1].parse().unwrap_or(0),
            f[2].parse().unwrap_or(0),
            f[0].to_string(),
            comm,
        ));
    }
    out
}

/// Live (not zombie) processes of a process group.
fn group_members(pgid: u32) -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|(_, _, g, state, _)| *g == pgid && state != "Z" && state != "X")
        .map(|(pid, _, _, _, comm)| (pid, comm))
        .collect()
}

/// The process group of the runner's child named `comm`, once it exists.
fn stage_group(runner: u32, comm: &str, limit: Duration) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some((_, _, pgid, _, _)) = processes()
            .into_iter()
            .find(|(_, ppid, _, _, c)| *ppid == runner && c == comm)
        {
            return pgid;
        }
        assert!(t0.elapsed() < limit, "the runner never started `{comm}`");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the runner to exit (bounded) and returns its exit code.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("the runner did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_runner(dir: &Path) -> Child {
    adaptor(dir, &["run", "m.toml", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The lease records under `_locks/` (not the store's hidden compare-and-swap lock files).
fn locks(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(kinds) = std::fs::read_dir(dir.join("artifacts/_locks")) else {
        return out;
    };
    for k in kinds.flatten().filter(|k| k.path().is_dir()) {
        for f in std::fs::read_dir(k.path()).unwrap().flatten() {
            if !f.file_name().to_string_lossy().starts_with('.') {
                out.push(f.path());
            }
        }
    }
    out
}

/// Sends `signal` to the runner, then checks that the stage's process group `pgid` dies with it
/// and, for a signal it handles (not SIGKILL), that it cancelled like Ctrl-C: exit 1, every lease
/// released.
fn signal_runner(runner: &mut Child, signal: i32, pgid: u32, dir: &Path) {
    // SAFETY: signalling the runner this test started.
    unsafe { libc_kill(runner.id() as i32, signal) };
    let code = wait_exit(runner, Duration::from_secs(30));
    wait_until(
        Duration::from_secs(5),
        &format!(
            "processes of the stage outlived the runner: {:?}",
            group_members(pgid)
        ),
        || group_members(pgid).is_empty(),
    );
    if signal != SIGKILL {
        assert_eq!(code, Some(1), "exit code after signal {signal}");
        assert!(locks(dir).is_empty(), "{:?}", locks(dir));
    }
}

/// A `command` stage whose shell waits on a background `sleep 300`.
fn command_case() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[stages.s]\nkind = 'command'\nparams.run = 'sleep 300 & echo started; wait'\n",
    )
    .unwrap();
    dir
}

fn command_stage_dies_with_its_runner(signal: i32) {
    let dir = command_case();
    let mut runner = start_runner(dir.path());
    let pgid = stage_group(runner.id(), "sh", Duration::from_secs(30));
    wait_until(
        Duration::from_secs(30),
        "the background sleep never started",
        || group_members(pgid).iter().any(|(_, c)| c == "sleep"),
    );
    signal_runner(&mut runner, signal, pgid, dir.path());
    if signal != SIGKILL {
        // A cancelled attempt is not a failure: the instance is as it was before the run.
        let status = adaptor(dir.path(), &["status", "m.toml"]).output().unwrap();
        let status = String::from_utf8_lossy(&status.stdout);
        assert!(status.starts_with("missing"), "{status}");
    }
    // Nothing partial looks complete.
    let complete = std::fs::read_dir(dir.path().join("artifacts/command"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("_manifest.json").exists())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(complete, 0);
}

#[test]
fn kill_9_of_the_runner_kills_a_command_stage_and_its_background_child() {
    command_stage_dies_with_its_runner(SIGKILL);
}

#[test]
fn sigterm_to_the_runner_cancels_a_command_stage_like_ctrl_c() {
    command_stage_dies_with_its_runner(SIGTERM);
}

#[test]
fn sighup_to_the_runner_cancels_a_command_stage_like_ctrl_c() {
    command_stage_dies_with_its_runner(SIGHUP);
}

/// A synthetic MIMIC-CXR miniature whose reports the real MiniLM encodes in the torch worker.
fn torch_case() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        format!(
            r#"
[backbones.minilm]
kind = "bert"
weights = "{minilm}"

[stages.synth]
kind = "synth"
params = {{ dataset = "mimic-cxr", n = 400, seed = 3, image_size = 32 }}

[stages.ingest]
kind = "ingest"
inputs.raw = "synth"

[stages.text]
kind = "encode-text"
params = {{ pooling = "mean", device = "cpu", batch_size = 4 }}
inputs = {{ records = "ingest", backbone = "backbones.minilm" }}
"#,
            minilm = common::minilm().display()
        ),
    )
    .unwrap();
    dir
}

fn torch_stage_dies_with_its_runner(signal: i32) {
    let dir = torch_case();
    let mut runner = start_runner(dir.path());
    let pgid = stage_group(runner.id(), "adaptor-torch", Duration::from_secs(180));
    // Wait until the worker is encoding (its progress reaches the stage log), not just starting.
    wait_until(
        Duration::from_secs(120),
        "the worker never reported progress",
        || {
            std::fs::read_dir(dir.path().join("artifacts/_staging"))
                .map(|d| {
                    d.flatten().any(|e| {
                        std::fs::read_to_string(e.path().join("log.txt"))
                            .is_ok_and(|l| l.lines().count() >= 2)
                    })
                })
                .unwrap_or(false)
        },
    );
    assert!(
        !group_members(pgid).is_empty(),
        "the worker ended before the test could stop it"
    );
    signal_runner(&mut runner, signal, pgid, dir.path());
}

#[test]
fn kill_9_of_the_runner_kills_the_torch_worker() {
    torch_stage_dies_with_its_runner(SIGKILL);
}

#[test]
fn sigterm_to_the_runner_stops_the_torch_worker() {
    torch_stage_dies_with_its_runner(SIGTERM);
}

#[test]
fn a_torch_worker_killed_by_sigkill_is_reported_with_the_signals_name() {
    let dir = torch_case();
    let mut runner = adaptor(dir.path(), &["run", "m.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What the kernel's out-of-memory killer does: SIGKILL to the worker alone.
    let worker = stage_group(runner.id(), "adaptor-torch", Duration::from_secs(180));
    // SAFETY: signalling the worker of the runner this test started (its pid is its group id).
    unsafe { libc_kill(worker as i32, SIGKILL) };
    let code = wait_exit(&mut runner, Duration::from_secs(60));
    let out = runner.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: text failed: the torch worker")
            && stderr.contains("was killed by SIGKILL"),
        "{stderr}"
    );
}

#[test]
fn a_timeout_and_a_silent_stage_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    std::fs::write(
        dir.path().join("m.toml"),
        format!(
            r#"
[defaults.command]
watchdog = "1s"

[stages.quiet]
kind = "command"
params.run = "echo start; while [ ! -f {go} ]; do sleep 0.05; done"

[stages.slow]
kind = "command"
params.run = "sleep 300"
params.timeout = "2s"
"#,
            go = go.display()
        ),
    )
    .unwrap();
    let mut runner = adaptor(dir.path(), &["run", "m.toml", "--jobs", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `status` from another process names the silent stage.
    let mut status = String::new();
    wait_until(Duration::from_secs(60), "status never said silent", || {
        let out = adaptor(dir.path(), &["status", "m.toml"]).output().unwrap();
        status = String::from_utf8_lossy(&out.stdout).into_owned();
        status
            .lines()
            .any(|l| l.starts_with("running") && l.contains("quiet") && l.contains("silent for"))
    });
    // `status` judges from the lease (taken before the shell started), the display from the
    // stage's last line; give the display's watchdog tick (0.5 s) time to see the silence too.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&go, "").unwrap();
    let code = wait_exit(&mut runner, Duration::from_secs(60));
    let out = runner.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("silent   quiet: no progress or log line for"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: slow failed: timed out after 2s"),
        "{stderr}"
    );
    let after = adaptor(dir.path(), &["status", "m.toml"]).output().unwrap();
    let after = String::from_utf8_lossy(&after.stdout);
    assert!(
        after.lines().any(|l| l.starts_with("failed")
            && l.contains("slow")
            && l.contains("timed out after 2s")),
        "{after}"
    );
}
