//! Chaos scenarios against the real `adaptor` binary, a real local store and a real S3 server
//! (moto on 127.0.0.1, behind a fault-injecting proxy): kill -9 at random points, S3 faults,
//! a suspended lease holder, concurrent runners, gc during a run, damaged artifacts. Each runs a
//! few repetitions with random timing here; `bench/chaos/run.sh` runs them in full and tabulates.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod proxy;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::*;
use proxy::{FaultPlan, Proxy, Rng};

fn label(b: Backend) -> &'static str {
    match b {
        Backend::Local => "local",
        Backend::S3 => "S3",
    }
}

/// `adaptor verify MANIFEST`: (exit 0, output).
fn verify(case: &Case, manifest: &str) -> (bool, String) {
    let out = case.run(&["verify", manifest], "check");
    (out.status.success(), text(&out))
}

/// The invariants after a run of the chain manifest: every instance complete, each complete
/// artifact holding exactly the bytes its stage writes, and `verify` finding nothing bad.
fn assert_chain_complete(case: &Case, manifest: &str, n: usize, big: usize, what: &str) {
    let states = case.states(manifest);
    let missing: Vec<_> = states
        .iter()
        .filter(|(_, (s, _))| s != "up-to-date")
        .collect();
    assert!(missing.is_empty(), "{what}: not complete: {missing:?}");
    let bad = check_chain(case, manifest, n, big);
    assert!(bad.is_empty(), "{what}: corrupt artifacts: {bad:#?}");
    let (ok, out) = verify(case, manifest);
    assert!(ok, "{what}: verify found bad artifacts:\n{out}");
}

// ---- 1. kill -9 of the runner at random points ----

fn kill_at_random_points(backend: Backend, ci: usize, per_100: usize) {
    let scenario = format!("kill -9 at random points ({})", label(backend));
    let seed = seed(&scenario);
    let mut rng = Rng::new(seed);
    let case = Case::new(backend);
    let mut log = BuildLog::new(&case);
    let n = 3;
    // On S3, s[i=1] also writes a 9 MiB file: a multipart upload a kill can cut.
    let big = match backend {
        Backend::Local => 0,
        Backend::S3 => 9 << 20,
    };
    let t0 = Instant::now();
    // How long one whole run takes here: the kills land uniformly within it.
    case.write(
        "m.toml",
        &chain_manifest(&case, n, "calibrate", "0.05", big),
    );
    let c0 = Instant::now();
    case.ok(&["run", "m.toml", "-j", "2", "-q"], "calibrate");
    let whole = c0.elapsed();
    log.take();
    let reps = reps(ci, per_100);
    let (mut kills, mut recovered) = (0u64, 0usize);
    for rep in 0..reps {
        let what = format!("{scenario}, repetition {rep} (seed {seed})");
        case.write(
            "m.toml",
            &chain_manifest(&case, n, &format!("{seed}-{rep}"), "0.05", big),
        );
        let before = case.complete("m.toml");
        let mut runner = case.spawn(&["run", "m.toml", "-j", "2", "-q"], "killed", None);
        std::thread::sleep(jitter(&mut rng, whole));
        if runner.try_wait().unwrap().is_none() {
            kills += 1;
        }
        signal(runner.id() as i32, SIGKILL);
        let _ = runner.wait();
        kill_orphans(&case);
        check_builds(&log.take(), &before, &format!("{what}: the killed run"));
        let after_kill = case.complete("m.toml");
        assert!(
            after_kill.is_superset(&before),
            "{what}: complete before the kill, gone after it: {:?}",
            before.difference(&after_kill).collect::<Vec<_>>()
        );
        let bad = check_chain(&case, "m.toml", n, big);
        assert!(bad.is_empty(), "{what}: after the kill: {bad:#?}");

        let out = case.run(&["run", "m.toml", "-j", "2"], "rerun");
        assert!(
            out.status.success(),
            "{what}: the rerun failed:\n{}",
            text(&out)
        );
        check_builds(&log.take(), &after_kill, &format!("{what}: the rerun"));
        assert_chain_complete(&case, "m.toml", n, big, &what);
        recovered += 1;
    }
    // Every artifact the repetitions left in the store, not only the last manifest's.
    let all = case.run(&["verify", "--all"], "check");
    assert!(
        all.status.success(),
        "{scenario}: verify --all:\n{}",
        text(&all)
    );
    record(Row {
        scenario: &scenario,
        reps,
        faults: kills,
        lost_or_corrupt: 0,
        recovered,
        seconds: t0.elapsed().as_secs_f64(),
        note: format!(
            "kills land uniformly within a whole run ({:.2}s); {} landed after it ended",
            whole.as_secs_f64(),
            reps as u64 - kills
        ),
    });
}

#[test]
fn kill_9_local_at_random_points_then_rerun() {
    kill_at_random_points(Backend::Local, 4, 100);
}

#[test]
fn kill_9_s3_at_random_points_then_rerun() {
    kill_at_random_points(Backend::S3, 2, 30);
}

// ---- 2. S3 faults injected by the proxy ----

/// Faults the server answers (503, 500), connections cut before the server saw the request,
/// stalls and latency.
fn server_faults() -> FaultPlan {
    FaultPlan {
        p_503: 0.05,
        p_500: 0.03,
        p_drop_request: 0.03,
        p_stall: 0.02,
        stall: Duration::from_millis(1500),
        latency: (Duration::from_millis(1), Duration::from_millis(8)),
        ..FaultPlan::default()
    }
}

/// Answers cut off in the middle of the body, after the server applied the request, on top of
/// the rest: for the requests with these methods.
fn cut_responses(methods: &'static [&'static str]) -> FaultPlan {
    FaultPlan {
        p_drop_response: 0.04,
        cut_methods: methods,
        ..server_faults()
    }
}

#[test]
fn s3_errors_stalls_and_dropped_requests_leave_no_corrupt_artifact() {
    s3_faults(
        "S3 errors, stalls, dropped requests",
        server_faults(),
        1,
        15,
    );
}

/// A write whose answer is lost: the client cannot tell whether it happened.
#[test]
fn s3_write_answers_cut_mid_body_leave_no_corrupt_artifact() {
    s3_faults(
        "S3 answers to writes cut mid-body",
        cut_responses(&["PUT", "POST", "DELETE"]),
        1,
        15,
    );
}

/// A read whose body is cut short.
#[test]
fn s3_read_answers_cut_mid_body_leave_no_corrupt_artifact() {
    s3_faults(
        "S3 answers to reads cut mid-body",
        cut_responses(&["GET", "HEAD"]),
        1,
        15,
    );
}

fn s3_faults(scenario: &str, plan: FaultPlan, ci: usize, per_100: usize) {
    let seed = seed(scenario);
    let case = Case::new(Backend::S3);
    let proxy = Proxy::start(case.moto_port(), plan, seed);
    let (n, big) = (3, 9 << 20); // big.bin goes up as a multipart upload
    let t0 = Instant::now();
    let reps = reps(ci, per_100);
    let (mut completed, mut failed_named, mut recovered) = (0, 0, 0);
    let mut log = BuildLog::new(&case);
    for rep in 0..reps {
        let what = format!("{scenario}, repetition {rep} (seed {seed})");
        case.write(
            "m.toml",
            &chain_manifest(&case, n, &format!("{seed}-{rep}"), "0", big),
        );
        let names: Vec<String> = case.states("m.toml").into_keys().collect();
        let runner = case.spawn(&["run", "m.toml", "-j", "2"], "faulty", Some(proxy.port));
        let out = wait_output(runner, Duration::from_secs(240), &["run", "m.toml"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            completed += 1;
        } else {
            // Failing is allowed; failing without naming the stage is not.
            let named = names
                .iter()
                .any(|n| err.contains(&format!("error: {n} failed")));
            assert!(
                out.status.code() == Some(1) && named,
                "{what}: the run failed without naming a stage (exit {:?}):\n{err}",
                out.status.code()
            );
            failed_named += 1;
        }
        let bad = check_chain(&case, "m.toml", n, big);
        assert!(bad.is_empty(), "{what}: {bad:#?}\n{err}");
        let (ok, v) = verify(&case, "m.toml");
        assert!(ok, "{what}: verify after the faulty run:\n{v}");
        // Without faults, the next run finishes the job and builds nothing twice.
        log.take();
        let before = case.complete("m.toml");
        case.ok(&["run", "m.toml", "-j", "2", "-q"], "clean");
        check_builds(&log.take(), &before, &format!("{what}: the clean rerun"));
        assert_chain_complete(&case, "m.toml", n, big, &what);
        recovered += 1;
    }
    let stats = proxy.stats();
    eprintln!("{scenario}: {}", stats.summary());
    assert!(stats.faults() > 0, "the proxy injected no fault");
    record(Row {
        scenario,
        reps,
        faults: stats.faults(),
        lost_or_corrupt: 0,
        recovered,
        seconds: t0.elapsed().as_secs_f64(),
        note: format!(
            "{completed} runs completed, {failed_named} failed naming the stage; {}",
            stats.summary()
        ),
    });
}

// ---- 3. a suspended lease holder ----

fn stop_lease_holder(backend: Backend, ci: usize, per_100: usize) {
    let scenario = format!("kill -STOP of the lease holder ({})", label(backend));
    let seed = seed(&scenario);
    let mut rng = Rng::new(seed);
    let mut case = Case::new(backend);
    case.lease_secs = Some(LEASE_SECS);
    let lease: f64 = LEASE_SECS.parse().unwrap();
    let t0 = Instant::now();
    let reps = reps(ci, per_100);
    let (mut recovered, mut noticed, mut elsewhere, mut stray) = (0, 0, 0, 0usize);
    let mut log = BuildLog::new(&case);
    let dir = case.path().to_path_buf();
    for rep in 0..reps {
        let what = format!("{scenario}, repetition {rep} (seed {seed})");
        // `a` writes which runner built it; how long it takes depends on the runner.
        let m = format!(
            "[stages.a]\nkind = 'command'\nparams.vars = {{ salt = '{seed}-{rep}' }}\n\
             params.run = 'echo \"a $CHAOS_TAG\" >> {log}; echo \"$CHAOS_TAG $$\" > $OUT/x; echo $$ > {d}/pid-$CHAOS_TAG; touch {d}/started-$CHAOS_TAG; sleep $(cat {d}/sleep-$CHAOS_TAG)'\n\
             [stages.b]\nkind = 'command'\ninputs.deps = 'a'\n\
             params.run = 'echo \"b $CHAOS_TAG\" >> {log}; cat $IN_DEPS/x > $OUT/y'\n",
            log = log.path.display(),
            d = dir.display()
        );
        case.write("m.toml", &m);
        for t in ["A", "B", "C"] {
            let _ = std::fs::remove_file(dir.join(format!("started-{t}")));
        }
        let sleep_a = 0.3 + rng.unit() * 1.2;
        let sleep_b = 0.3 + rng.unit() * 2.0;
        case.write("sleep-A", &format!("{sleep_a:.2}"));
        case.write("sleep-B", &format!("{sleep_b:.2}"));
        case.write("sleep-C", "0");

        let a = case.spawn(&["run", "m.toml"], "A", None);
        let a_pid = a.id() as i32;
        let a = std::thread::spawn(move || wait_output(a, Duration::from_secs(90), &["run", "A"]));
        wait_for(&dir.join("started-A"), &what);
        std::thread::sleep(jitter(&mut rng, Duration::from_secs_f64(sleep_a)));
        let stage_a: i32 = read_pid(&dir.join("pid-A"));
        signal(a_pid, SIGSTOP);
        signal(-stage_a, SIGSTOP);
        let _resume_on_failure = Suspended(vec![-stage_a, a_pid]);
        // Past the lease timeout, a second runner takes the key over.
        std::thread::sleep(Duration::from_secs_f64(lease + 0.5));
        let b = case.spawn(&["run", "m.toml"], "B", None);
        let b = std::thread::spawn(move || wait_output(b, Duration::from_secs(60), &["run", "B"]));
        wait_for(&dir.join("started-B"), &what);
        // The suspended runner wakes up while B still builds, or after B committed.
        let cont_during_b = rng.unit() < 0.5;
        let mut b = Some(b);
        let mut b_out = None;
        if !cont_during_b {
            b_out = b.take().map(|h| h.join().unwrap());
        }
        signal(-stage_a, SIGCONT);
        signal(a_pid, SIGCONT);
        let a_out = a.join().unwrap();
        // A third runner started now must not build what B holds or committed.
        let c_out = case.run(&["run", "m.toml"], "C");
        let b_out = b_out.unwrap_or_else(|| b.take().unwrap().join().unwrap());
        assert!(
            b_out.status.success(),
            "{what}: the runner that took over failed:\n{}",
            text(&b_out)
        );
        assert!(
            c_out.status.success(),
            "{what}: the third runner failed:\n{}",
            text(&c_out)
        );
        let a_text = text(&a_out);
        let lines = log.take();
        let count = |l: &str| lines.iter().filter(|x| x.as_str() == l).count();
        assert_eq!(
            count("a C"),
            0,
            "{what}: a third runner rebuilt `a`: {lines:?}"
        );
        assert_eq!(count("a B"), 1, "{what}: {lines:?}");
        assert!(
            lines.iter().filter(|l| l.starts_with("b ")).count() <= 1,
            "{what}: `b` built twice: {lines:?}"
        );
        let states = case.states("m.toml");
        let key_a = &states["a"].1;
        let key_b = &states["b"].1;
        assert!(
            states.values().all(|(s, _)| s == "up-to-date"),
            "{what}: {states:?}\nA: {a_text}"
        );
        let x = case.artifact_file("command", key_a, "x").expect("a/x");
        assert!(
            x.starts_with(b"B "),
            "{what}: the committed `a` is not the lease holder's: {:?}\nA said: {a_text}",
            String::from_utf8_lossy(&x)
        );
        let y = case.artifact_file("command", key_b, "y").expect("b/y");
        assert_eq!(
            y, x,
            "{what}: downstream read other bytes than the committed ones"
        );
        let (ok, v) = verify(&case, "m.toml");
        assert!(ok, "{what}: verify:\n{v}\nA said: {a_text}");
        // The suspended runner built nothing: it says it lost the lease (B had not committed yet)
        // or that another runner built the key (B had), and commits nothing either way.
        assert!(
            a_text.contains("0 ran,"),
            "{what}: the suspended runner claims a build:\n{a_text}"
        );
        if a_text.contains("lost its lease") {
            noticed += 1;
        } else {
            assert!(
                a_text.contains("done     a  (built by another runner)"),
                "{what}: the suspended runner neither reported the lost lease nor the other build:\n{a_text}"
            );
            elsewhere += 1;
        }
        // Objects in the committed folder that its manifest does not name (what the suspended
        // runner left); counted, and never read (verify and the content checks above passed).
        let manifest = case.artifact_manifest("command", key_a).unwrap();
        let named: BTreeSet<String> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect();
        let prefix = format!("command/{key_a}/");
        stray += case
            .list(&format!("command/{key_a}"))
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|p| {
                !named.contains(*p)
                    && !matches!(*p, "_manifest.json" | "_log.txt")
                    && !manifest["attempt"]
                        .as_str()
                        .is_some_and(|a| p.starts_with(&format!("{a}/")))
            })
            .count();
        recovered += 1;
    }
    record(Row {
        scenario: &scenario,
        reps,
        faults: reps as u64,
        lost_or_corrupt: 0,
        recovered,
        seconds: t0.elapsed().as_secs_f64(),
        note: format!(
            "lease timeout {LEASE_SECS}s; the suspended runner reported the lost lease {noticed} times (woken while the new owner built) and `built by another runner` {elsewhere} times (woken after it committed); {stray} stray object(s) left beside the committed files"
        ),
    });
}

fn wait_for(path: &std::path::Path, what: &str) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_pid(path: &std::path::Path) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(p) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no pid in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn stopped_lease_holder_loses_its_key_local() {
    stop_lease_holder(Backend::Local, 1, 10);
}

#[test]
fn stopped_lease_holder_loses_its_key_s3() {
    stop_lease_holder(Backend::S3, 1, 10);
}

// ---- 4. concurrent runners on one store ----

fn concurrent_runners(backend: Backend, runners: usize, instances: usize) {
    let scenario = format!(
        "{runners} concurrent runners, {instances} instances ({})",
        label(backend)
    );
    let seed = seed(&scenario);
    let case = Case::new(backend);
    let t0 = Instant::now();
    let log = case.path().join("builds.log");
    let is: Vec<String> = (1..=instances).map(|i| i.to_string()).collect();
    case.write(
        "m.toml",
        &format!(
            "[matrix]\ni = [{}]\n[stages.s]\nkind = 'command'\nforeach = ['i']\nparams.vars = {{ salt = '{seed}' }}\n\
             params.run = 'echo \"s[i=${{i}}] $CHAOS_TAG\" >> {}; echo ${{i}} > $OUT/x'\n",
            is.join(", "),
            log.display()
        ),
    );
    let handles: Vec<_> = (0..runners)
        .map(|r| {
            let child = case.spawn(&["run", "m.toml", "-j", "2", "-q"], &format!("r{r}"), None);
            std::thread::spawn(move || wait_output(child, Duration::from_secs(600), &["run"]))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{scenario}: a runner failed:\n{}",
            text(&out)
        );
    }
    let mut built: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect();
    built.sort();
    let mut want: Vec<String> = (1..=instances).map(|i| format!("s[i={i}]")).collect();
    want.sort();
    let twice: Vec<_> = built.windows(2).filter(|w| w[0] == w[1]).collect();
    assert!(
        twice.is_empty(),
        "{scenario} (seed {seed}): built twice: {twice:?}"
    );
    assert_eq!(built, want, "{scenario}: each key built exactly once");
    let mut corrupt = 0;
    for (name, (state, key)) in case.states("m.toml") {
        assert_eq!(state, "up-to-date", "{scenario}: {name}");
        let i = name.trim_start_matches("s[i=").trim_end_matches(']');
        if case.artifact_file("command", &key, "x") != Some(format!("{i}\n").into_bytes()) {
            corrupt += 1;
        }
    }
    assert_eq!(corrupt, 0, "{scenario}: corrupt artifacts");
    let (ok, v) = verify(&case, "m.toml");
    assert!(ok, "{scenario}: verify:\n{v}");
    record(Row {
        scenario: &scenario,
        reps: 1,
        faults: 0,
        lost_or_corrupt: corrupt,
        recovered: runners,
        seconds: t0.elapsed().as_secs_f64(),
        note: format!("{instances} keys, each built once"),
    });
}

#[test]
fn two_and_four_runners_on_a_local_store_build_each_key_once() {
    concurrent_runners(Backend::Local, 2, 200);
    concurrent_runners(Backend::Local, 4, 200);
}

#[test]
fn two_and_four_runners_on_s3_build_each_key_once() {
    // 200 instances take about a minute on moto with 2 cores; the suite runs 40 (the bench 200).
    let instances = if full() { 200 } else { 40 };
    concurrent_runners(Backend::S3, 2, instances);
    concurrent_runners(Backend::S3, 4, instances);
}

// ---- 5. gc during a run, and next to things gc does not own ----

fn gc_keeps_what_it_does_not_own(backend: Backend, ci: usize, per_100: usize) {
    let scenario = format!(
        "gc during runs and beside foreign data ({})",
        label(backend)
    );
    let seed = seed(&scenario);
    let mut rng = Rng::new(seed);
    let case = Case::new(backend);
    let t0 = Instant::now();
    let n = 3;
    // An artifact no manifest references any more: gc may delete it (and must, to show it ran).
    case.write("old.toml", &chain_manifest(&case, 1, "old", "0", 0));
    case.ok(&["run", "old.toml", "-q"], "old");
    let old_keys: Vec<String> = case
        .states("old.toml")
        .into_values()
        .map(|(_, k)| k)
        .collect();
    // A manifest whose key has resume state but no artifact yet (a half-trained instance).
    case.write(
        "resume.toml",
        "[stages.r]\nkind = 'command'\nparams.run = 'echo resumed > $OUT/r'\n",
    );
    let resume_key = case.states("resume.toml")["r"].1.clone();
    let foreign = [
        "notes/readme.txt".to_string(),
        "other-tool.json".to_string(),
        "command/not-a-key/file.txt".to_string(),
    ];
    let resume = match backend {
        // A local store keeps resume state in the store, a remote one in the cache folder.
        Backend::Local => Some(format!("_resume/command/{resume_key}/state.bin")),
        Backend::S3 => None,
    };
    let job = format!("_jobs/command/{resume_key}.json");
    let mut owned_by_others: Vec<String> = foreign.to_vec();
    owned_by_others.extend(resume.clone());
    for rel in &owned_by_others {
        case.put_raw(rel, b"not the store's to delete\n");
    }
    // The record of a job that is still queued (gc cannot ask the scheduler; it must keep it).
    case.put_raw(
        &job,
        serde_json::json!({
            "instance": "r", "job_id": "4242", "owner": "login-node:1",
            "unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64(),
            "log": "/tmp/slurm-4242.out"
        })
        .to_string()
        .as_bytes(),
    );
    owned_by_others.push(job.clone());

    let reps = reps(ci, per_100);
    let mut gcs = 0u64;
    let mut recovered = 0;
    for rep in 0..reps {
        let what = format!("{scenario}, repetition {rep} (seed {seed})");
        case.write(
            "m.toml",
            &chain_manifest(&case, n, &format!("{seed}-{rep}"), "0.2", 0),
        );
        // Independent stages that no manifest given to gc references: gc may delete them once
        // committed, never while a live runner holds their lease or publishes them.
        let flat_log = case.path().join("flat.log");
        case.write(
            "flat.toml",
            &format!(
                "[matrix]\ni = [1, 2, 3, 4]\n[stages.f]\nkind = 'command'\nforeach = ['i']\n\
                 params.vars = {{ salt = '{seed}-{rep}' }}\n\
                 params.run = 'echo f${{i}} >> {}; sleep 0.15; seq 1 $((${{i}} * 1000)) > $OUT/x'\n",
                flat_log.display()
            ),
        );
        let spawn = |m: &str| {
            let child = case.spawn(&["run", m, "-j", "2", "-q"], "runner", None);
            std::thread::spawn(move || wait_output(child, Duration::from_secs(120), &["run"]))
        };
        let (runner, flat) = (spawn("m.toml"), spawn("flat.toml"));
        // gc, with the manifest being run and the one that needs the resume state, at random
        // moments of the runs.
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline && !(runner.is_finished() && flat.is_finished()) {
            std::thread::sleep(jitter(&mut rng, Duration::from_millis(300)));
            let out = case.run(&["gc", "m.toml", "resume.toml"], "gc");
            assert!(out.status.success(), "{what}: gc failed:\n{}", text(&out));
            gcs += 1;
        }
        for (name, handle) in [("m.toml", runner), ("flat.toml", flat)] {
            let out = handle.join().unwrap();
            assert!(
                out.status.success(),
                "{what}: the run of {name} beside gc failed:\n{}",
                text(&out)
            );
        }
        // What gc left of the unreferenced run is complete and right, or gone.
        for (name, (state, key)) in case.states("flat.toml") {
            let i: usize = name[4..name.len() - 1].parse().unwrap();
            let want: String = (1..=i * 1000).map(|k| format!("{k}\n")).collect();
            match state.as_str() {
                "up-to-date" => assert_eq!(
                    case.artifact_file("command", &key, "x"),
                    Some(want.into_bytes()),
                    "{what}: {name} is complete with other bytes"
                ),
                "missing" | "stale" => {}
                other => panic!("{what}: {name} is {other} after gc"),
            }
        }
        assert_chain_complete(&case, "m.toml", n, 0, &what);
        for rel in &owned_by_others {
            assert!(
                case.exists_raw(rel),
                "{what}: gc deleted {rel}, which the store does not own"
            );
        }
        if let Some(r) = &resume {
            assert!(case.exists_raw(r));
        }
        recovered += 1;
    }
    // The old manifest's artifacts were not referenced: gc removed them.
    for key in &old_keys {
        assert!(
            case.artifact_manifest("command", key).is_none(),
            "{scenario}: gc kept an unreferenced artifact {key}"
        );
    }
    record(Row {
        scenario: &scenario,
        reps,
        faults: gcs,
        lost_or_corrupt: 0,
        recovered,
        seconds: t0.elapsed().as_secs_f64(),
        note: format!(
            "{gcs} gc runs during runs; kept {} foreign, resume and job entries",
            owned_by_others.len()
        ),
    });
}

#[test]
fn gc_during_a_run_and_beside_foreign_data_local() {
    gc_keeps_what_it_does_not_own(Backend::Local, 2, 20);
}

#[test]
fn gc_during_a_run_and_beside_foreign_data_s3() {
    gc_keeps_what_it_does_not_own(Backend::S3, 1, 10);
}

// ---- 6. a damaged artifact ----

fn damaged_artifacts(backend: Backend, ci: usize, per_100: usize) {
    let scenario = format!("truncated, deleted or altered file ({})", label(backend));
    let seed = seed(&scenario);
    let mut rng = Rng::new(seed);
    let case = Case::new(backend);
    let t0 = Instant::now();
    let n = 3;
    let reps = reps(ci, per_100);
    let mut log = BuildLog::new(&case);
    let mut recovered = 0;
    for rep in 0..reps {
        let what = format!("{scenario}, repetition {rep} (seed {seed})");
        case.write(
            "m.toml",
            &chain_manifest(&case, n, &format!("{seed}-{rep}"), "0", 0),
        );
        case.ok(&["run", "m.toml", "-q"], "build");
        log.take();
        let states = case.states("m.toml");
        // One file of one artifact: truncated, deleted, or one byte altered (same size).
        let (victim, file) = match rng.range(0, 3) {
            0 => (format!("s[i={}]", rng.range(1, n as u64 + 1)), "x"),
            1 => (format!("t[i={}]", rng.range(1, n as u64 + 1)), "copy"),
            _ => ("all".to_string(), "y"),
        };
        let key = states[&victim].1.clone();
        let rel = format!("command/{key}/{file}");
        let object = match case.artifact_manifest("command", &key).unwrap()["attempt"].as_str() {
            Some(a) => format!("command/{key}/{a}/{file}"),
            None => rel.clone(),
        };
        let damage = rng.range(0, 3);
        let original = case.artifact_file("command", &key, file).unwrap();
        match damage {
            0 => case.put_raw(&object, &original[..original.len() / 2]),
            1 => case.delete_raw(&object),
            _ => {
                let mut altered = original.clone();
                altered[0] ^= 0x01;
                case.put_raw(&object, &altered);
            }
        }
        let damage_name = ["truncated", "deleted", "altered"][damage as usize];
        let what = format!("{what}: {victim}/{file} {damage_name}");
        let status = case.states("m.toml");
        if damage < 2 {
            // A size mismatch or a missing file: one stat per file finds it.
            assert_eq!(status[&victim].0, "corrupt", "{what}: {status:?}");
        }
        let (ok, v) = verify(&case, "m.toml");
        assert!(!ok, "{what}: verify passed:\n{v}");
        assert!(
            v.contains(&victim) || v.contains(&key[..12]),
            "{what}: verify does not name the artifact:\n{v}"
        );
        assert!(
            v.contains(file),
            "{what}: verify does not name the file:\n{v}"
        );
        if damage == 2 {
            // Same size: only a rehash sees it. Quarantine it so that the next run rebuilds it.
            let q = case.run(&["verify", "m.toml", "--quarantine"], "check");
            assert_eq!(q.status.code(), Some(1), "{what}: {}", text(&q));
        }
        let out = case.ok(&["run", "m.toml"], "rebuild");
        let built = log.take();
        assert_eq!(
            built
                .iter()
                .map(|l| l.rsplit_once(' ').unwrap().0)
                .collect::<Vec<_>>(),
            [victim.as_str()],
            "{what}: the run should rebuild exactly the damaged artifact:\n{out}"
        );
        assert_chain_complete(&case, "m.toml", n, 0, &what);
        recovered += 1;
    }
    record(Row {
        scenario: &scenario,
        reps,
        faults: reps as u64,
        lost_or_corrupt: 0,
        recovered,
        seconds: t0.elapsed().as_secs_f64(),
        note: "status says corrupt (size or missing), verify names the file, run rebuilds".into(),
    });
}

#[test]
fn damaged_artifact_is_found_and_rebuilt_local() {
    damaged_artifacts(Backend::Local, 3, 30);
}

#[test]
fn damaged_artifact_is_found_and_rebuilt_s3() {
    damaged_artifacts(Backend::S3, 2, 20);
}

// ---- the proxy itself ----

/// Through the proxy without faults an object goes up and comes back byte for byte; with each
/// fault forced, the client sees exactly that fault, and the counters say so.
#[test]
fn the_proxy_forwards_bytes_intact_and_injects_each_fault() {
    use common::moto::http_bytes;
    let moto = common::moto::start("proxied");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let clean = Proxy::start(moto.port, FaultPlan::default(), 1);
    let (status, _) = http_bytes(clean.port, "PUT", "/proxied/obj", &body);
    assert_eq!(status, 200);
    let (status, got) = http_bytes(clean.port, "GET", "/proxied/obj", &[]);
    assert_eq!((status, got.len()), (200, body.len()));
    assert!(got == body, "the proxy altered the bytes");
    assert_eq!(clean.stats().faults(), 0);

    let forced = |plan: FaultPlan| Proxy::start(moto.port, plan, 2);
    let p = forced(FaultPlan {
        p_503: 1.0,
        ..FaultPlan::default()
    });
    let (status, text) = http_bytes(p.port, "GET", "/proxied/obj", &[]);
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&text).contains("<Code>SlowDown</Code>"));
    let p = forced(FaultPlan {
        p_500: 1.0,
        ..FaultPlan::default()
    });
    assert_eq!(http_bytes(p.port, "GET", "/proxied/obj", &[]).0, 500);

    // Cut mid-response: fewer bytes than the object, after the server applied the request.
    let p = forced(FaultPlan {
        p_drop_response: 1.0,
        ..FaultPlan::default()
    });
    let (_, got) = http_bytes(p.port, "GET", "/proxied/obj", &[]);
    assert!(got.len() < body.len() && body.starts_with(&got));
    let changed: Vec<u8> = body.iter().map(|b| b ^ 1).collect();
    let _ = http_bytes(p.port, "PUT", "/proxied/obj", &changed);
    assert_eq!(
        http_bytes(moto.port, "GET", "/proxied/obj", &[]).1,
        changed,
        "a cut response still lets the write through"
    );

    // Dropped mid-request: the server never sees the write.
    let p = forced(FaultPlan {
        p_drop_request: 1.0,
        ..FaultPlan::default()
    });
    let (status, _) = http_bytes(p.port, "PUT", "/proxied/obj", &body);
    assert_eq!(status, 0, "no answer to a request dropped mid-body");
    assert_eq!(http_bytes(moto.port, "GET", "/proxied/obj", &[]).1, changed);
    assert_eq!(
        p.stats()
            .drop_request
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A stall holds the request for its duration, then forwards it.
    let p = forced(FaultPlan {
        p_stall: 1.0,
        stall: Duration::from_millis(400),
        ..FaultPlan::default()
    });
    let t0 = Instant::now();
    assert_eq!(http_bytes(p.port, "GET", "/proxied/obj", &[]).0, 200);
    assert!(t0.elapsed() >= Duration::from_millis(400));
}
