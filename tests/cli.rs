//! End-to-end tests of the `adaptor` binary: real processes, a real local store, a real S3 server
//! (moto, started on 127.0.0.1 by the test), kill -9 in the middle of a stage.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

mod common;

use common::moto::{self, s3_env};
use common::{sorted_lines, wait_until, walk, Case};

fn count_complete(store: &Path, kind: &str) -> usize {
    std::fs::read_dir(store.join(kind))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("_manifest.json").is_file())
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_stage_killed_mid_write_leaves_nothing_complete_and_runs_again() {
    let case = Case::new();
    // The stage writes half its output, then stalls while `slow` exists.
    case.write(
        "m.toml",
        "[stages.s]\nkind = 'command'\nparams.run = 'echo partial > $OUT/a.txt; while [ -f \"$VAR_FLAG\" ]; do sleep 0.05; done; echo done >> $OUT/a.txt'\nparams.vars = { flag = 'FLAG_PATH' }\n",
    );
    let flag = case.path().join("slow.flag");
    std::fs::write(&flag, "").unwrap();
    let text = std::fs::read_to_string(case.path().join("m.toml"))
        .unwrap()
        .replace("FLAG_PATH", &flag.to_string_lossy());
    case.write("m.toml", &text);

    let mut child: Child = case
        .cmd(&["run", "m.toml", "-q"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the stage has written its partial file into staging.
    let staging = case.path().join("artifacts/_staging");
    wait_until(Duration::from_secs(20), "the stage never started", || {
        std::fs::read_dir(&staging)
            .map(|d| d.flatten().any(|e| e.path().join("out/a.txt").exists()))
            .unwrap_or(false)
    });
    // kill -9 the runner and its stage.
    unsafe { libc_kill(-(child.id() as i32), 9) };
    child.wait().unwrap();

    assert_eq!(
        count_complete(&case.path().join("artifacts"), "command"),
        0,
        "nothing may look complete"
    );
    let status = case.ok(&["status", "m.toml"]);
    assert!(status.contains("missing"), "{status}");

    std::fs::remove_file(&flag).unwrap();
    let out = case.ok(&["run", "m.toml"]);
    assert!(out.contains("1 ran"), "{out}");
    let dir = std::fs::read_dir(case.path().join("artifacts/command"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(dir.join("a.txt")).unwrap(),
        "partial\ndone\n"
    );
    // gc removes the dead runner's staging folder.
    let gc = case.ok(&["gc", "m.toml"]);
    assert!(gc.contains("_staging/"), "{gc}");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn two_concurrent_processes_build_each_key_once() {
    let case = Case::new();
    let log = case.path().join("builds.log");
    case.write(
        "m.toml",
        &format!(
            "[matrix]\ni = [1, 2, 3, 4, 5, 6]\n[stages.s]\nkind = 'command'\nforeach = ['i']\nparams.run = 'sleep 0.3; echo ${{i}} >> {log}; echo ${{i}} > $OUT/x'\n\
             [stages.all]\nkind = 'command'\ninputs.deps = 's[*]'\nparams.run = 'echo all >> {log}; cat $IN_DEPS_0/x > $OUT/y'\n",
            log = log.display()
        ),
    );
    let a = case
        .cmd(&["run", "m.toml", "-j", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = case
        .cmd(&["run", "m.toml", "-j", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{a:?}\n{b:?}");
    let lines = sorted_lines(&log);
    assert_eq!(
        lines,
        ["1", "2", "3", "4", "5", "6", "all"],
        "each key built exactly once"
    );
    assert_eq!(count_complete(&case.path().join("artifacts"), "command"), 7);
    assert!(case
        .ok(&["status", "m.toml"])
        .contains("all 7 instance(s) up to date"));
}

#[test]
fn run_twice_then_change_one_parameter() {
    let case = Case::new();
    case.write("raw/notes.txt", "hello\n");
    case.write(
        "m.toml",
        "[datasets.raw]\nkind = 'text'\nroot = 'raw'\n[matrix]\nseed = [0, 1]\n\
         [stages.a]\nkind = 'command'\ninputs.deps = 'datasets.raw'\nparams.run = 'cp $IN_DEPS/notes.txt $OUT/'\n\
         [stages.b]\nkind = 'command'\nforeach = ['seed']\ninputs.deps = 'a'\nparams = { run = 'cat $IN_DEPS/notes.txt > $OUT/o; echo $VAR_SEED >> $OUT/o', vars = { seed = '${seed}' } }\n",
    );
    assert!(case.ok(&["run", "m.toml"]).contains("3 ran, 0 up to date"));
    let second = case.ok(&["run", "m.toml"]);
    assert!(second.contains("0 ran, 3 up to date"), "{second}");
    assert!(case
        .ok(&["status", "m.toml"])
        .contains("all 3 instance(s) up to date"));

    // Cosmetic edits change nothing.
    let text = std::fs::read_to_string(case.path().join("m.toml")).unwrap();
    case.write(
        "m.toml",
        &format!(
            "# a comment\n\n{}",
            text.replace("seed = [0, 1]", "seed = [ 0 ,  1 ]  # seeds")
        ),
    );
    assert!(case.ok(&["run", "m.toml"]).contains("0 ran, 3 up to date"));

    // A parameter change re-runs that instance only, and explain says why.
    case.write(
        "m.toml",
        &text.replace("echo $VAR_SEED >>", "echo seed=$VAR_SEED >>"),
    );
    let explain = case.ok(&["explain", "m.toml", "b[seed=1]"]);
    assert!(explain.contains("parameter `run` changed"), "{explain}");
    let dry = case.ok(&["run", "m.toml", "--dry-run"]);
    assert!(
        dry.contains("would run") && dry.contains("b[seed=0]") && !dry.contains("  a  "),
        "{dry}"
    );
    let third = case.ok(&["run", "m.toml", "--only", "b[seed=1]"]);
    assert!(third.contains("1 ran, 1 up to date"), "{third}");
    let json: serde_json::Value =
        serde_json::from_str(&case.ok(&["status", "m.toml", "--json"])).unwrap();
    let states: Vec<(&str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["instance"].as_str().unwrap(),
                r["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("a", "up-to-date"),
            ("b[seed=0]", "stale"),
            ("b[seed=1]", "up-to-date")
        ]
    );

    // A changed input file: explain names it.
    case.write("raw/notes.txt", "hello again\n");
    case.write("raw/new.txt", "x\n");
    let explain = case.ok(&["explain", "m.toml", "a"]);
    assert!(explain.contains("input `deps` (datasets.raw"), "{explain}");
    assert!(
        explain.contains("changed notes.txt") && explain.contains("added new.txt"),
        "{explain}"
    );

    // show by key prefix.
    let key = json[2]["key"].as_str().unwrap();
    let shown = case.ok(&["show", &key[..10]]);
    assert!(
        shown.contains("instance  b[seed=1]") && shown.contains("vars = {seed = 1}"),
        "{shown}"
    );
}

#[test]
fn a_failing_stage_names_itself_and_its_log() {
    let case = Case::new();
    case.write(
        "m.toml",
        "[stages.bad]\nkind = 'command'\nparams.run = 'echo reading rows.csv; echo \"rows.csv: row 3: column label is empty\" >&2; exit 3'\n\
         [stages.after]\nkind = 'command'\ninputs.deps = 'bad'\nparams.run = 'true'\n[stages.other]\nkind = 'command'\nparams.run = 'echo ok > $OUT/ok'\n",
    );
    let out = case.run(&["run", "m.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: bad failed: command `"), "{err}");
    assert!(
        err.contains("exited with status 3: rows.csv: row 3: column label is empty"),
        "{err}"
    );
    assert!(
        err.contains("not run: after (upstream bad failed)"),
        "{err}"
    );
    let log_line = err
        .lines()
        .find(|l| l.trim_start().starts_with("log: "))
        .unwrap();
    let log = std::fs::read_to_string(log_line.trim_start().trim_start_matches("log: ")).unwrap();
    assert!(
        log.contains("reading rows.csv") && log.contains("FAILED"),
        "{log}"
    );
    let status = case.ok(&["status", "m.toml"]);
    assert!(
        status.contains("failed") && status.contains("up-to-date") && status.contains("missing"),
        "{status}"
    );
}

#[test]
fn bad_manifest_exits_2_with_file_line_and_key() {
    let case = Case::new();
    case.write(
        "m.toml",
        "[stages.s]\nkind = 'command'\nparams.run = 'true'\nparams.vrs = {}\n",
    );
    let out = case.run(&["run", "m.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: m.toml:4:8: stages.s.params.vrs: unknown parameter for stage kind `command` (known: run, vars)"
    );
}

// ---- S3, against a real S3-compatible server (moto) on 127.0.0.1 ----

#[test]
fn s3_round_trip_run_status_explain_gc() {
    let moto = moto::start("adaptor-test");
    let case = Case::new();
    case.write("raw/data.bin", &"x".repeat(20 << 20)); // forces a multipart upload downstream
    case.write(
        "m.toml",
        "store = 's3://adaptor-test/runs/one'\n[datasets.raw]\nkind = 'blob'\nroot = 'raw'\n[matrix]\nseed = [0, 1]\n\
         [stages.copy]\nkind = 'command'\ninputs.deps = 'datasets.raw'\nparams.run = 'cp $IN_DEPS/data.bin $OUT/big.bin'\n\
         [stages.use]\nkind = 'command'\nforeach = ['seed']\ninputs.deps = 'copy'\nparams = { run = 'wc -c < $IN_DEPS/big.bin > $OUT/n; echo ${seed} >> $OUT/n' }\n",
    );
    let go = |args: &[&str]| -> Output { s3_env(&mut case.cmd(args), moto.port).output().unwrap() };
    let text = common::text;

    let first = go(&["run", "m.toml"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("3 ran"), "{}", text(&first));
    assert!(!text(&first).contains("secret-that-must-not-leak"));
    let second = go(&["run", "m.toml"]);
    assert!(
        text(&second).contains("0 ran, 3 up to date"),
        "{}",
        text(&second)
    );
    let status = go(&["status", "m.toml"]);
    assert!(
        text(&status).contains("all 3 instance(s) up to date"),
        "{}",
        text(&status)
    );

    // The downstream stage read the 20 MiB artifact back from S3.
    let listing = moto.http("GET", "/adaptor-test?list-type=2&prefix=runs/one/command/");
    assert!(
        listing.contains("big.bin") && listing.contains("_manifest.json"),
        "{listing}"
    );
    let cached: Vec<_> = walk(&case.path().join("cache/artifacts"));
    let big = cached
        .iter()
        .find(|p| p.ends_with("big.bin"))
        .expect("the upstream artifact was downloaded");
    assert_eq!(std::fs::metadata(big).unwrap().len(), 20 << 20);

    // Change the seeds: one new instance, one gone; gc deletes the orphan from S3.
    let m = std::fs::read_to_string(case.path().join("m.toml")).unwrap();
    case.write("m.toml", &m.replace("seed = [0, 1]", "seed = [0, 2]"));
    let explain = go(&["explain", "m.toml", "use[seed=2]"]);
    assert!(text(&explain).contains("never built"), "{}", text(&explain));
    assert!(text(&go(&["run", "m.toml"])).contains("1 ran, 2 up to date"));
    let dry = go(&["gc", "m.toml", "--dry-run"]);
    assert!(
        text(&dry).contains("would delete 1 folder(s)"),
        "{}",
        text(&dry)
    );
    let gc = go(&["gc", "m.toml"]);
    assert!(
        text(&gc).contains("deleted 1 folder(s)") && text(&gc).contains("kept 3"),
        "{}",
        text(&gc)
    );
    assert!(text(&go(&["status", "m.toml"])).contains("all 3 instance(s) up to date"));
    // --store overrides the manifest: a fresh prefix has nothing.
    let other = go(&["status", "m.toml", "--store", "s3://adaptor-test/runs/two"]);
    assert!(
        text(&other).contains("0 of 3 instance(s) up to date"),
        "{}",
        text(&other)
    );
}

/// The README's first command, as a test: the demo manifest twice into a fresh store, locally and on
/// S3. The second run does nothing and `status` says all is up to date.
#[test]
fn demo_manifest_twice_is_a_no_op_locally_and_on_s3() {
    // The smaller demo (tests/common), up to pre-training: data stages (synth, ingest, preprocess),
    // both encoders and the adaptor through the torch worker, on a local store and on S3. (tests/learning.rs runs the
    // whole smaller demo; scripts/demo.sh the real one.)
    let case = Case::new();
    case.write("demo.toml", &common::small_demo());
    let demo_s = "demo.toml";
    let only = ["--only", "pretrain"];
    fn run<'a>(demo: &'a str, store: &'a str, only: &[&'a str]) -> Vec<&'a str> {
        [&["run", demo, "--store", store][..], only].concat()
    }
    let first = case.ok(&run(demo_s, "store", &only));
    assert!(first.contains("6 ran, 0 up to date, 0 failed"), "{first}");
    let second = case.ok(&run(demo_s, "store", &only));
    assert!(second.contains("0 ran, 6 up to date, 0 failed"), "{second}");
    let status = case.ok(&["status", demo_s, "--store", "store"]);
    assert!(
        status.contains("missing") && !status.contains("stale"),
        "{status}"
    );

    let moto = moto::start("demo");
    let go = |args: &[&str]| -> String {
        let out = s3_env(&mut case.cmd(args), moto.port).output().unwrap();
        let text = common::text(&out);
        assert!(out.status.success(), "{args:?}: {text}");
        text
    };
    let first = go(&run(demo_s, "s3://demo/adaptor", &only));
    assert!(first.contains("6 ran, 0 up to date, 0 failed"), "{first}");
    let second = go(&run(demo_s, "s3://demo/adaptor", &only));
    assert!(second.contains("0 ran, 6 up to date, 0 failed"), "{second}");
    // Same keys on both stores, and the same instances complete.
    let local = case.ok(&["status", demo_s, "--store", "store", "--json"]);
    let remote = go(&["status", demo_s, "--store", "s3://demo/adaptor", "--json"]);
    let rows = |t: &str| -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["state"].to_string(),
                )
            })
            .collect()
    };
    assert_eq!(rows(&local), rows(&remote));
}

#[test]
fn s3_two_runners_commit_each_key_once() {
    let moto = moto::start("race");
    let case = Case::new();
    let log = case.path().join("builds.log");
    case.write(
        "m.toml",
        &format!(
            "store = 's3://race/p'\n[matrix]\ni = [1, 2, 3, 4]\n[stages.s]\nkind = 'command'\nforeach = ['i']\nparams.run = 'sleep 0.3; echo ${{i}} >> {}; echo ${{i}} > $OUT/x'\n",
            log.display()
        ),
    );
    let spawn = || {
        s3_env(&mut case.cmd(&["run", "m.toml", "-j", "2"]), moto.port)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{a:?}\n{b:?}");
    let lines = sorted_lines(&log);
    assert_eq!(lines, ["1", "2", "3", "4"]);
}

/// The merge of an encode stage's shards needs no libtorch: the runner does it in its own process.
/// The shards are encoded by the worker; the merge is then redone with no worker to start
/// (`ADAPTOR_TORCH` names nothing), and its table equals the unsharded one byte for byte.
#[test]
fn the_merge_of_shards_runs_without_the_torch_worker() {
    let manifest = common::SHARDED_ENCODE.replace("MINILM", &common::minilm().to_string_lossy());
    let case = Case::new();
    case.write("whole.toml", &manifest.replace("SHARDS", ""));
    case.write("sharded.toml", &manifest.replace("SHARDS", "shards = 2"));
    case.ok(&["run", "whole.toml", "--store", "whole"]);
    let first = case.ok(&["run", "sharded.toml", "--store", "store"]);
    assert!(first.contains("5 ran"), "{first}");

    let store = case.path().join("store");
    std::fs::remove_dir_all(common::artifact_of(&store, "encode-text", "enc")).unwrap();
    let out = case
        .cmd(&["run", "sharded.toml", "--store", "store"])
        .env("ADAPTOR_TORCH", case.path().join("no-torch-worker"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the merge without a worker:\n{text}");
    assert!(text.contains("1 ran, 4 up to date"), "{text}");
    let table = |store: &str| {
        let dir = common::artifact_of(&case.path().join(store), "encode-text", "enc");
        std::fs::read(dir.join("embeddings.parquet")).unwrap()
    };
    assert!(
        table("store") == table("whole"),
        "the merged table is not byte-identical to the unsharded one"
    );
}
