//! The runner parameter `threads`: a stage runs at its own thread count whatever `-j` and the
//! cores, the count enters the key only when it is not the default, and the pool waits for room
//! instead of shrinking a stage.

mod common;

use std::sync::Arc;

use common::write;
use pipeline::executor::RunOptions;
use pipeline::{NoProgress, Outcome, StageRegistry};

fn registry() -> StageRegistry {
    let mut reg = common::registry(1).reg;
    reg.register(Arc::new(pipeline::builtin::CommandStage));
    reg
}

const STAGE: &str =
    "[stages.s]\nkind = \"command\"\nparams.run = \"echo $THREADS > $OUT/threads\"\n";

fn key_and_threads(text: &str) -> (String, Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.toml", text);
    let plan = pipeline::plan::load(&dir.path().join("m.toml"), &registry()).unwrap();
    let r = common::resolve_in(dir.path(), &plan, &registry());
    (r.keys[0].to_string(), plan.instances[0].threads)
}

#[test]
fn threads_enters_the_key_only_at_another_count_than_the_default() {
    let (plain, threads) = key_and_threads(STAGE);
    assert_eq!(threads, None);
    let (one, threads) = key_and_threads(&format!("{STAGE}params.threads = 1\n"));
    assert_eq!((one.as_str(), threads), (plain.as_str(), Some(1)));
    let (three, _) = key_and_threads(&format!("{STAGE}params.threads = 3\n"));
    assert_ne!(three, plain);
    let (from_defaults, _) = key_and_threads(&format!("[defaults.command]\nthreads = 3\n{STAGE}"));
    assert_eq!(from_defaults, three);

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m.toml",
        &format!("{STAGE}params.threads = 0\n"),
    );
    let err = pipeline::plan::load(&dir.path().join("m.toml"), &registry())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.toml:4:") && err.contains("stages.s.params.threads"),
        "{err}"
    );
}

#[test]
fn each_stage_runs_at_its_own_count_and_the_pool_waits_for_room() {
    // Two 3-thread stages on 4 cores with -j 2 cannot run side by side; a 1-thread one can.
    let timed =
        "date +%s.%N > $OUT/start; sleep 0.4; echo $THREADS > $OUT/threads; date +%s.%N > $OUT/end";
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m.toml",
        &format!(
            "[stages.a]\nkind = \"command\"\nparams = {{ run = \"{timed}\", threads = 3 }}\n\
             [stages.b]\nkind = \"command\"\nparams = {{ run = \"{timed}; echo b\", threads = 3 }}\n\
             [stages.c]\nkind = \"command\"\nparams = {{ run = \"{timed}; echo c\" }}\n"
        ),
    );
    let opts = RunOptions {
        jobs: 2,
        threads: 4,
        ..RunOptions::default()
    };
    let report = common::run_manifest(dir.path(), &registry(), &opts, Arc::new(NoProgress));
    assert!(
        report
            .outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Ran { .. })),
        "{:?}",
        report.outcomes
    );
    let read = |instance: &str, file: &str| -> String {
        let root = dir.path().join("artifacts/command");
        for art in std::fs::read_dir(&root).unwrap().flatten() {
            let m = std::fs::read_to_string(art.path().join("_manifest.json")).unwrap();
            if m.contains(&format!("\"instance\": \"{instance}\""))
                || m.contains(&format!("\"instance\":\"{instance}\""))
            {
                return std::fs::read_to_string(art.path().join(file)).unwrap();
            }
        }
        panic!("no artifact of {instance}")
    };
    let span = |i: &str| -> (f64, f64) {
        let t = |f: &str| read(i, f).trim().parse::<f64>().unwrap();
        (t("start"), t("end"))
    };
    assert_eq!(read("a", "threads").trim(), "3");
    assert_eq!(read("b", "threads").trim(), "3");
    assert_eq!(read("c", "threads").trim(), "1");
    let ((a0, a1), (b0, b1)) = (span("a"), span("b"));
    assert!(
        a1 <= b0 || b1 <= a0,
        "two 3-thread stages overlapped on 4 cores: a {a0}..{a1}, b {b0}..{b1}"
    );
}
