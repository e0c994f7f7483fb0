//! The lifecycle of the processes a stage starts, with the real `command` stage and real shells:
//! time limits, background processes that outlive the shell, bytes that are not UTF-8, signals,
//! the watchdog, and output files that cannot be hashed. Every test is bounded: a hang fails it.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::write;
use pipeline::executor::{states, Resolved, RunOptions, RunReport, State};
use pipeline::{NoProgress, Plan, ProgressSink, StageRegistry, Store};
use pipeline::{Outcome, RunEvent};

fn registry() -> StageRegistry {
    let mut reg = common::registry(1).reg;
    reg.register(Arc::new(pipeline::builtin::CommandStage));
    reg
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit` (instead of hanging).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// Whether a process runs (a zombie nobody reaped yet counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X"))
    })
}

fn read_pid(path: &Path) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: u32, limit: Duration) {
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < limit,
            "process {pid} still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(manifest: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let text = manifest.replace("DIR", &dir.path().display().to_string());
        write(dir.path(), "m.toml", &text);
        Case { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn plan(&self) -> Plan {
        pipeline::plan::load(&self.path().join("m.toml"), &registry()).unwrap()
    }
    fn store(&self) -> Store {
        common::local_store(self.path())
    }
    fn resolved(&self, plan: &Plan) -> Resolved {
        common::resolve_in(self.path(), plan, &registry())
    }
    /// Runs the manifest in a thread bounded by `limit`: (outcomes, seconds).
    fn run_within(
        &self,
        limit: Duration,
        sink: Arc<dyn ProgressSink>,
    ) -> (Vec<(String, Outcome)>, f64) {
        let dir = self.path().to_path_buf();
        within(limit, move || {
            let t0 = Instant::now();
            let report = run_short_leases(&dir, sink);
            (report.outcomes, t0.elapsed().as_secs_f64())
        })
    }
    fn log_of(&self, kind: &str) -> String {
        let root = self.path().join("artifacts").join(kind);
        let dir = std::fs::read_dir(&root).unwrap().next().unwrap().unwrap();
        std::fs::read_to_string(dir.path().join("_log.txt")).unwrap()
    }
}

/// Runs the manifest of `dir` with 1-second leases (a killed runner's lease goes stale fast).
fn run_short_leases(dir: &Path, sink: Arc<dyn ProgressSink>) -> RunReport {
    let opts = RunOptions {
        lease_secs: 1.0,
        ..RunOptions::default()
    };
    common::run_manifest(dir, &registry(), &opts, sink)
}

fn failed_with(outcomes: &[(String, Outcome)], name: &str) -> String {
    match outcomes.iter().find(|(n, _)| n == name) {
        Some((_, Outcome::Failed { error, .. })) => error.clone(),
        other => panic!("{name}: expected a failure, got {other:?}"),
    }
}

#[test]
fn a_timeout_fails_the_instance_and_kills_every_process_of_the_stage() {
    let case = Case::new(
        r#"
[stages.slow]
kind = "command"
params.run = "echo $$ > DIR/sh.pid; sleep 300 & echo $! > DIR/bg.pid; wait"
params.timeout = "1s"
"#,
    );
    let (outcomes, secs) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    assert_eq!(failed_with(&outcomes, "slow"), "timed out after 1s");
    // 1 s of limit, then SIGTERM: `sh` waiting in `wait` dies at once.
    assert!(secs < 10.0, "took {secs:.1}s");
    wait_gone(
        read_pid(&case.path().join("sh.pid")),
        Duration::from_secs(5),
    );
    wait_gone(
        read_pid(&case.path().join("bg.pid")),
        Duration::from_secs(5),
    );
    // The failure is recorded like any other, and `status` says so.
    let plan = case.plan();
    let resolved = case.resolved(&plan);
    let st = states(&plan, &resolved, &case.store(), 60.0).unwrap();
    assert!(
        matches!(&st[0], State::Failed { error, .. } if error == "timed out after 1s"),
        "{st:?}"
    );
}

#[test]
fn a_stage_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let case = Case::new(
        r#"
[stages.stubborn]
kind = "command"
params.run = "trap '' TERM; echo $$ > DIR/sh.pid; while true; do sleep 0.1; done"
params.timeout = 0.5
"#,
    );
    let (outcomes, secs) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    assert_eq!(failed_with(&outcomes, "stubborn"), "timed out after 0.5s");
    let grace = pipeline::process::GRACE.as_secs_f64();
    assert!(secs >= grace && secs < grace + 10.0, "took {secs:.1}s");
    wait_gone(
        read_pid(&case.path().join("sh.pid")),
        Duration::from_secs(5),
    );
}

#[test]
fn a_stage_inside_the_runner_that_ends_after_its_limit_fails_too() {
    // `echo` sleeps without checking for cancellation, like a stage with no checks in its loop.
    let case = Case::new(
        "[stages.late]\nkind = \"echo\"\nparams = { sleep_ms = 800, timeout = \"200ms\" }\n",
    );
    let (outcomes, _) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    assert_eq!(failed_with(&outcomes, "late"), "timed out after 0.2s");
    assert!(
        !case.path().join("artifacts/echo").exists() || {
            std::fs::read_dir(case.path().join("artifacts/echo"))
                .unwrap()
                .flatten()
                .all(|e| !e.path().join("_manifest.json").exists())
        }
    );
}

#[test]
fn runner_parameters_are_not_part_of_the_key() {
    let base = "[stages.s]\nkind = \"command\"\nparams.run = \"echo hi > $OUT/a\"\n";
    let key_of = |text: &str| {
        let case = Case::new(text);
        let plan = case.plan();
        let r = case.resolved(&plan);
        (r.keys[0].clone(), plan.instances[0].limits)
    };
    let (plain, limits) = key_of(base);
    assert_eq!(limits, pipeline::stage::Limits::default());
    let (with_params, limits) = key_of(&format!(
        "{base}params.timeout = \"1h30m\"\nparams.watchdog = 90\n"
    ));
    assert_eq!(with_params, plain);
    assert_eq!(limits.timeout, Some(Duration::from_secs(5400)));
    assert_eq!(limits.watchdog, Duration::from_secs(90));
    let (with_defaults, limits) = key_of(&format!("[defaults.command]\ntimeout = \"2h\"\n{base}"));
    assert_eq!(with_defaults, plain);
    assert_eq!(limits.timeout, Some(Duration::from_secs(7200))); // The memory budget: read into the limits, never into the key.
    let (with_memory, limits) = key_of(&format!("{base}params.memory = \"512MiB\"\n"));
    assert_eq!(with_memory, plain);
    assert_eq!(limits.memory, Some(512 << 20));
    let (with_default_memory, limits) =
        key_of(&format!("[defaults.command]\nmemory = \"4GiB\"\n{base}"));
    assert_eq!(with_default_memory, plain);
    assert_eq!(limits.memory, Some(4 << 30));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Whatever the limits say, and however they are spelled, the key is the one without them.
    #[test]
    fn no_timeout_or_watchdog_changes_a_key(
        timeout in 1u64..10_000_000,
        watchdog in 1u64..100_000,
        spelled in proptest::bool::ANY,
    ) {
        let base = "[stages.s]\nkind = \"command\"\nparams.run = \"echo hi > $OUT/a\"\n";
        let key_of = |text: &str| {
            let case = Case::new(text);
            let plan = case.plan();
            case.resolved(&plan)
                .keys[0]
                .clone()
        };
        let timeout = if spelled { format!("\"{}m{}s\"", timeout / 60, timeout % 60) } else { timeout.to_string() };
        let with = format!("[defaults.command]\nwatchdog = {watchdog}\n{base}params.timeout = {timeout}\n");
        proptest::prop_assert_eq!(key_of(&with), key_of(base));
    }
}

#[test]
fn a_bad_timeout_is_a_manifest_error_at_its_line() {
    let case = Case::new(
        "[stages.s]\nkind = \"command\"\nparams.run = \"true\"\nparams.timeout = \"soon\"\n",
    );
    let err = pipeline::plan::load(&case.path().join("m.toml"), &registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.toml:4:")
            && err.contains("stages.s.params.timeout")
            && err.contains("\"soon\""),
        "{err}"
    );
}

#[test]
fn a_bad_memory_budget_is_a_manifest_error_at_its_line() {
    let case = Case::new(
        "[stages.s]\nkind = \"command\"\nparams.run = \"true\"\nparams.memory = \"lots\"\n",
    );
    let err = pipeline::plan::load(&case.path().join("m.toml"), &registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.toml:4:")
            && err.contains("stages.s.params.memory")
            && err.contains("expected a memory size"),
        "{err}"
    );
}

#[test]
fn a_background_process_holding_the_output_open_does_not_hang_the_runner() {
    let case = Case::new(
        r#"
[stages.bg]
kind = "command"
params.run = "sleep 300 & echo $! > DIR/bg.pid; echo started"
"#,
    );
    let (outcomes, secs) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    assert!(matches!(outcomes[0].1, Outcome::Ran { .. }), "{outcomes:?}");
    assert!(secs < 10.0, "took {secs:.1}s");
    // Left over when the shell exited: killed with the rest of the group.
    wait_gone(
        read_pid(&case.path().join("bg.pid")),
        Duration::from_secs(5),
    );
    assert!(case.log_of("command").contains("started"));
}

#[test]
fn a_process_that_left_the_group_cannot_hang_the_runner_either() {
    let case = Case::new(
        r#"
[stages.escaped]
kind = "command"
params.run = "setsid sh -c 'echo $$ > DIR/escaped.pid; sleep 60' & while [ ! -s DIR/escaped.pid ]; do sleep 0.05; done; echo started"
"#,
    );
    let (outcomes, secs) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    let escaped = read_pid(&case.path().join("escaped.pid"));
    // SAFETY: ending the processes this test started: `setsid` made the escaped shell the
    // leader of its own group, which holds its `sleep` too.
    unsafe { libc::kill(-(escaped as i32), libc::SIGKILL) };
    assert!(matches!(outcomes[0].1, Outcome::Ran { .. }), "{outcomes:?}");
    let drain = pipeline::process::DRAIN.as_secs_f64();
    assert!(secs < drain + 10.0, "took {secs:.1}s");
    assert!(
        case.log_of("command").contains("still holds it open"),
        "{}",
        case.log_of("command")
    );
}

#[test]
fn output_that_is_not_utf8_is_logged_lossily_and_nothing_is_lost() {
    let case = Case::new(
        r#"
[stages.bytes]
kind = "command"
params.run = "printf 'before\\377\\376after\\n'; printf 'err\\377\\n' >&2; echo last; printf 'no newline'"
"#,
    );
    let (outcomes, _) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    assert!(matches!(outcomes[0].1, Outcome::Ran { .. }), "{outcomes:?}");
    let log = case.log_of("command");
    for want in [
        "before\u{fffd}\u{fffd}after",
        "stderr: err\u{fffd}",
        "] last",
        "] no newline",
    ] {
        assert!(log.contains(want), "no `{want}` in:\n{log}");
    }
}

#[test]
fn a_stage_killed_by_a_signal_is_reported_with_the_signals_name() {
    let case = Case::new(
        r#"
[stages.segv]
kind = "command"
params.run = "echo about to crash >&2; kill -SEGV $$"
"#,
    );
    let (outcomes, _) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    let error = failed_with(&outcomes, "segv");
    assert!(
        error.contains("was killed by SIGSEGV") && error.contains("about to crash"),
        "{error}"
    );
}

#[test]
fn a_fifo_in_the_output_fails_the_instance_by_name_instead_of_blocking() {
    let case = Case::new(
        r#"
[stages.fifo]
kind = "command"
params.run = "mkdir sub; mkfifo sub/pipe; echo ok > a.txt"
"#,
    );
    let (outcomes, _) = case.run_within(Duration::from_secs(60), Arc::new(NoProgress));
    let error = failed_with(&outcomes, "fifo");
    assert!(
        error.contains("sub/pipe") && error.contains("FIFO"),
        "{error}"
    );
}

/// Records scheduling events.
#[derive(Default)]
struct Events(Mutex<Vec<RunEvent>>);

impl ProgressSink for Events {
    fn progress(&self, _: &str, _: u64, _: u64, _: &str) {}
    fn log(&self, _: &str, _: &str) {}
    fn event(&self, event: &RunEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

#[test]
fn a_silent_stage_is_reported_by_the_watchdog_and_in_status() {
    let case = Case::new(
        r#"
[stages.quiet]
kind = "command"
params.run = "echo start; while [ ! -f DIR/go ]; do sleep 0.05; done; echo end"
params.watchdog = "0.5s"
"#,
    );
    let events = Arc::new(Events::default());
    let sink: Arc<dyn ProgressSink> = events.clone();
    let dir = case.path().to_path_buf();
    let handle = {
        let dir = dir.clone();
        std::thread::spawn(move || run_short_leases(&dir, sink).outcomes)
    };
    // `status` (states) from outside the run: the lease carries the stage's last sign of life.
    let plan = case.plan();
    let resolved = case.resolved(&plan);
    let t0 = Instant::now();
    let silent = loop {
        let st = states(&plan, &resolved, &case.store(), 60.0).unwrap();
        if let State::Running {
            silent: Some(s), ..
        } = st[0]
        {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never reported silent: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(silent >= 0.5, "{silent}");
    let t0 = Instant::now();
    while !events
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, RunEvent::Silent { .. }))
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "no Silent event");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still silent: no second report for the same silence.
    std::thread::sleep(Duration::from_millis(1200));
    std::fs::write(dir.join("go"), "").unwrap();
    let outcomes = handle.join().unwrap();
    assert!(matches!(outcomes[0].1, Outcome::Ran { .. }), "{outcomes:?}");
    let events = events.0.lock().unwrap();
    let reported: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Silent { instance, seconds } if instance == "quiet" => Some(*seconds),
            _ => None,
        })
        .collect();
    assert_eq!(
        reported.len(),
        1,
        "one report per silence: {reported:?} {events:?}"
    );
    assert!(reported[0] >= 0.5);
}
