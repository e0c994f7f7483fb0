//! The executor against real stores (a local folder and object_store's in-memory store): what
//! runs, what is skipped, what a failure leaves behind, and two runners on one store.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{registry, sharded_registry, write, Fixture};
use pipeline::executor::{resolve, run, states, Resolved, RunOptions, State};
use pipeline::ops::Against;
use pipeline::Outcome;
use pipeline::{FingerprintCache, NoProgress, Plan, Store, StoreSettings, StoreUrl};

const GRID: &str = r#"
[datasets.raw]
kind = "csv"
root = "raw"

[matrix]
vision = ["a", "b"]
fraction = [0.01, 1.0]

[stages.ingest]
kind = "echo"
inputs.data = "datasets.raw"

[stages.train]
kind = "echo"
foreach = ["vision"]
inputs.src = "ingest"
params = { name = "${vision}", seed = 1 }

[stages.eval]
kind = "echo"
foreach = ["vision", "fraction"]
inputs.src = "train[vision=${vision}]"
params = { lr = "${fraction}" }

[stages.report]
kind = "other"
inputs.src = "eval[*]"
"#;

struct Env {
    dir: tempfile::TempDir,
    fx: Fixture,
}

impl Env {
    fn new(manifest: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "raw/a.csv", "id\n1\n");
        write(dir.path(), "m.toml", manifest);
        Env {
            dir,
            fx: registry(1),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn plan(&self) -> Plan {
        pipeline::plan::load(&self.path().join("m.toml"), &self.fx.reg).unwrap()
    }
    fn cache(&self) -> FingerprintCache {
        FingerprintCache::new(self.path().join("cache"))
    }
    /// The manifest's plan and its keys.
    fn planned(&self) -> (Plan, Resolved) {
        let plan = self.plan();
        let resolved = resolve(&plan, &self.fx.reg, &self.cache(), false).unwrap();
        (plan, resolved)
    }
    fn store(&self, url: &StoreUrl) -> Store {
        Store::open(url, &StoreSettings::default(), &self.path().join("cache")).unwrap()
    }
    fn local(&self) -> StoreUrl {
        StoreUrl::Local(self.path().join("artifacts"))
    }
    fn run(&self, store: &Store) -> Vec<(String, Outcome)> {
        let (plan, resolved) = self.planned();
        let opts = RunOptions {
            jobs: 2,
            threads: 2,
            ..RunOptions::default()
        };
        run(
            &plan,
            &self.fx.reg,
            store,
            &resolved,
            &opts,
            Arc::new(NoProgress),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap()
        .outcomes
    }
    fn states(&self, store: &Store) -> Vec<(String, State)> {
        let (plan, resolved) = self.planned();
        let s = states(&plan, &resolved, store, 60.0).unwrap();
        plan.instances
            .iter()
            .map(|i| i.name.clone())
            .zip(s)
            .collect()
    }
    fn edit(&self, from: &str, to: &str) {
        let p = self.path().join("m.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "manifest has no `{from}`");
        std::fs::write(p, text.replacen(from, to, 1)).unwrap();
    }
}

/// gc with the test registry's kinds and no cluster.
fn gc(
    store: &Store,
    referenced: &HashSet<(String, pipeline::StageKey)>,
    dry_run: bool,
) -> pipeline::ops::GcReport {
    let kinds: HashSet<String> = ["echo", "other"].iter().map(|k| k.to_string()).collect();
    let scope = pipeline::ops::GcScope {
        kinds: &kinds,
        referenced,
        lease_secs: 60.0,
        job_alive: &|_| None,
    };
    pipeline::ops::gc(store, &scope, dry_run).unwrap()
}

fn ran(outcomes: &[(String, Outcome)]) -> Vec<String> {
    let mut v: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Ran { .. }))
        .map(|(n, _)| n.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn second_run_skips_everything() {
    for memory in [false, true] {
        let env = Env::new(GRID);
        let store = env.store(&if memory {
            StoreUrl::Memory
        } else {
            env.local()
        });
        let first = env.run(&store);
        assert_eq!(ran(&first).len(), 8, "{first:?}");
        assert_eq!(env.fx.runs.load(Ordering::SeqCst), 8);
        let second = env.run(&store);
        assert!(
            second.iter().all(|(_, o)| *o == Outcome::UpToDate),
            "{second:?}"
        );
        assert_eq!(env.fx.runs.load(Ordering::SeqCst), 8);
        assert!(env
            .states(&store)
            .iter()
            .all(|(_, s)| *s == State::UpToDate));
    }
}

#[test]
fn a_parameter_change_reruns_exactly_that_instance_and_its_dependents() {
    let env = Env::new(GRID);
    let store = env.store(&env.local());
    env.run(&store);
    env.edit(
        "params = { name = \"${vision}\", seed = 1 }",
        "params = { name = \"${vision}\", seed = 2 }",
    );
    let st = env.states(&store);
    let stale: Vec<&str> = st
        .iter()
        .filter(|(_, s)| matches!(s, State::Stale { .. }))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(stale.len(), 7, "{st:?}");
    let again = env.run(&store);
    assert_eq!(
        ran(&again),
        vec![
            "eval[vision=a,fraction=0.01]",
            "eval[vision=a,fraction=1.0]",
            "eval[vision=b,fraction=0.01]",
            "eval[vision=b,fraction=1.0]",
            "report",
            "train[vision=a]",
            "train[vision=b]",
        ]
    );
    // A change in one branch of the grid leaves the other branch alone.
    env.edit("foreach = [\"vision\", \"fraction\"]\ninputs.src = \"train[vision=${vision}]\"\nparams = { lr = \"${fraction}\" }",
             "foreach = [\"vision\", \"fraction\"]\ninputs.src = \"train[vision=${vision}]\"\nparams = { lr = \"${fraction}\", name = \"${vision}\" }");
    env.edit("vision = [\"a\", \"b\"]", "vision = [\"x\", \"b\"]");
    let third = env.run(&store);
    assert_eq!(
        ran(&third),
        vec![
            "eval[vision=b,fraction=0.01]",
            "eval[vision=b,fraction=1.0]",
            "eval[vision=x,fraction=0.01]",
            "eval[vision=x,fraction=1.0]",
            "report",
            "train[vision=x]",
        ]
    );
}

#[test]
fn a_changed_input_file_reruns_its_readers_only() {
    let env = Env::new(GRID);
    let store = env.store(&env.local());
    env.run(&store);
    write(env.path(), "raw/a.csv", "id\n1\n"); // same bytes, new mtime
    assert!(env.run(&store).iter().all(|(_, o)| *o == Outcome::UpToDate));
    write(env.path(), "raw/a.csv", "id\n2\n");
    assert_eq!(ran(&env.run(&store)).len(), 8);
}

#[test]
fn a_failure_stops_its_dependents_only_and_leaves_nothing_complete() {
    for memory in [false, true] {
        let env = Env::new(&GRID.replace(
            "params = { name = \"${vision}\", seed = 1 }",
            "params = { name = \"${vision}\", seed = 1, fail = true }",
        ));
        let store = env.store(&if memory {
            StoreUrl::Memory
        } else {
            env.local()
        });
        let out = env.run(&store);
        let get = |n: &str| out.iter().find(|(name, _)| name == n).unwrap().1.clone();
        assert!(matches!(get("ingest"), Outcome::Ran { .. }));
        match get("train[vision=a]") {
            Outcome::Failed { error, log } => {
                assert!(
                    error.contains("failing on purpose (row 7 of nothing.csv)"),
                    "{error}"
                );
                let text = store
                    .get(&log)
                    .unwrap()
                    .expect("the log of a failed attempt is kept");
                let text = String::from_utf8_lossy(&text);
                assert!(text.contains("FAILED: failing on purpose"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            get("eval[vision=a,fraction=0.01]"),
            Outcome::NotRun { .. }
        ));
        assert!(matches!(get("report"), Outcome::NotRun { .. }));
        let st = env.states(&store);
        assert!(matches!(
            st.iter().find(|(n, _)| n == "train[vision=a]").unwrap().1,
            State::Failed { .. }
        ));
        assert_eq!(st.iter().filter(|(_, s)| *s == State::UpToDate).count(), 1);
        if !memory {
            // Nothing in the store looks complete for the failed key, and no staging is left.
            let staging = env.path().join("artifacts/_staging");
            assert_eq!(
                std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0),
                0
            );
        }
        // Fixed: the failed instances and their dependents run; ingest does not run again.
        env.edit(", fail = true", "");
        let fixed = env.run(&store);
        assert_eq!(ran(&fixed).len(), 7, "memory store: {memory}; {fixed:?}");
        assert!(env
            .states(&store)
            .iter()
            .all(|(_, s)| *s == State::UpToDate));
    }
}

#[test]
fn a_panicking_stage_is_a_failure_not_a_crash() {
    let env = Env::new("[stages.s]\nkind = 'echo'\nparams.panic = true\n[stages.t]\nkind='echo'\n");
    let store = env.store(&env.local());
    let out = env.run(&store);
    assert!(
        matches!(&out[0].1, Outcome::Failed { error, .. } if error.contains("panicked: index out of bounds on purpose")),
        "{out:?}"
    );
    assert!(matches!(out[1].1, Outcome::Ran { .. }));
}

#[test]
fn an_incomplete_leftover_is_not_complete_and_is_replaced() {
    let env = Env::new("[stages.s]\nkind = 'echo'\n");
    let store = env.store(&env.local());
    let (_, resolved) = env.planned();
    let dir = env
        .path()
        .join("artifacts/echo")
        .join(resolved.keys[0].as_str());
    write(&dir, "out.txt", "half-written");
    assert_eq!(env.states(&store)[0].1, State::Missing);
    assert!(matches!(env.run(&store)[0].1, Outcome::Ran { .. }));
    assert_ne!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "half-written"
    );
    assert!(dir.join("_manifest.json").is_file() && dir.join("_log.txt").is_file());
}

#[test]
fn two_runners_on_one_store_build_each_key_once() {
    let manifest = "[matrix]\ni = [1, 2, 3, 4]\n[stages.s]\nkind = 'echo'\nforeach = ['i']\nparams = { seed = '${i}', sleep_ms = 300 }\n[stages.t]\nkind='echo'\ninputs.src = 's[*]'\n";
    let env = Env::new(manifest);
    let url = env.local();
    std::thread::scope(|s| {
        let a = s.spawn(|| env.run(&env.store(&url)));
        let b = s.spawn(|| env.run(&env.store(&url)));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        for (name, _) in &a {
            let oa = &a.iter().find(|(n, _)| n == name).unwrap().1;
            let ob = &b.iter().find(|(n, _)| n == name).unwrap().1;
            let built = [oa, ob]
                .iter()
                .filter(|o| matches!(o, Outcome::Ran { .. }))
                .count();
            assert_eq!(built, 1, "{name}: {oa:?} / {ob:?}");
        }
    });
    assert_eq!(env.fx.runs.load(Ordering::SeqCst), 5);
}

#[test]
fn gc_keeps_what_the_manifest_references() {
    let env = Env::new(GRID);
    let store = env.store(&env.local());
    env.run(&store);
    env.edit("seed = 1", "seed = 5");
    env.run(&store);
    let (plan, resolved) = env.planned();
    let referenced: HashSet<_> = plan
        .instances
        .iter()
        .map(|i| i.kind.clone())
        .zip(resolved.keys.clone())
        .collect();
    let dry = gc(&store, &referenced, true);
    assert_eq!(dry.deleted.len(), 7);
    assert_eq!(
        env.states(&store)
            .iter()
            .filter(|(_, s)| *s == State::UpToDate)
            .count(),
        8
    );
    let real = gc(&store, &referenced, false);
    assert_eq!(real.deleted.len(), 7);
    assert_eq!(real.kept, 8);
    assert!(env
        .states(&store)
        .iter()
        .all(|(_, s)| *s == State::UpToDate));
    assert!(gc(&store, &referenced, false).deleted.is_empty());
}

/// `explain` of instance `idx` against its last build.
fn explain_last_build(
    env: &Env,
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    idx: usize,
) -> pipeline::ops::Explanation {
    pipeline::ops::explain(
        plan,
        resolved,
        store,
        &env.cache(),
        idx,
        &Against::LastBuild,
    )
    .unwrap()
}

#[test]
fn explain_names_the_changed_parameter_through_the_dag() {
    let env = Env::new(GRID);
    let store = env.store(&env.local());
    env.run(&store);
    env.edit("seed = 1", "seed = 2");
    let (plan, resolved) = env.planned();
    let idx = plan.instance("eval[vision=a,fraction=0.01]").unwrap();
    let lines = explain_last_build(&env, &plan, &resolved, &store, idx).lines;
    let text: Vec<String> = lines
        .iter()
        .map(|l| {
            // Keys and times vary; keep the shape.
            let mut l = l.clone();
            for k in &resolved.keys {
                l = l.replace(k.short(), "<key>");
            }
            if let Some(p) = l.find("the build of ") {
                l = format!("{}the build of <time> (key <old>):", &l[..p]);
            }
            l
        })
        .collect();
    let text = text.join("\n");
    assert!(
        text.contains("input `src` (train[vision=a]) changed"),
        "{text}"
    );
    assert!(text.contains("parameter `seed` changed: 1 -> 2"), "{text}");
    let up = plan.instance("ingest").unwrap();
    assert!(
        explain_last_build(&env, &plan, &resolved, &store, up).lines[1].starts_with("up to date")
    );
}

#[test]
fn shards_run_in_the_pool_then_the_merge_and_equal_the_unsharded_output() {
    let text = "[stages.enc]\nkind = 'split'\nshards = 3\nparams.lines = 10\n[stages.use]\nkind = 'echo'\ninputs.src = 'enc'\n";
    let (fx, merges) = sharded_registry();
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
        fx,
    };
    write(env.path(), "m.toml", text);
    let store = env.store(&env.local());
    let first = env.run(&store);
    assert_eq!(
        ran(&first),
        [
            "enc",
            "enc[shard=0/3]",
            "enc[shard=1/3]",
            "enc[shard=2/3]",
            "use"
        ]
    );
    assert_eq!(merges.load(Ordering::SeqCst), 1);
    let (plan, resolved) = env.planned();
    let artifact = |name: &str| {
        let i = plan.instance(name).unwrap();
        env.path()
            .join("artifacts")
            .join(&plan.instances[i].kind)
            .join(resolved.keys[i].as_str())
    };
    let merged = std::fs::read_to_string(artifact("enc").join("out.txt")).unwrap();
    let want: String = (0..10).map(|k| format!("line {k}\n")).collect();
    assert_eq!(merged, want, "the merge is the unsharded output");
    assert_eq!(
        std::fs::read_to_string(artifact("enc[shard=1/3]").join("out.txt")).unwrap(),
        "line 3\nline 4\nline 5\n"
    );
    // Up to date: nothing runs again.
    assert!(ran(&env.run(&store)).is_empty());
    assert_eq!(merges.load(Ordering::SeqCst), 1);
    // Two shards instead of three: new shards, a new merge, and its reader.
    env.edit("shards = 3", "shards = 2");
    assert_eq!(
        ran(&env.run(&store)),
        ["enc", "enc[shard=0/2]", "enc[shard=1/2]", "use"]
    );
    let states = env.states(&store);
    assert!(
        states.iter().all(|(_, s)| *s == State::UpToDate),
        "{states:?}"
    );
}

/// A copy of a manifest has no run index of its own: `states` and `explain` compare its
/// instances with the last build of the same name from any manifest in the store, and say which.
#[test]
fn a_copied_manifest_is_compared_with_the_last_build_from_any_manifest() {
    let env = Env::new(GRID);
    let store = env.store(&StoreUrl::Memory);
    env.run(&store);
    let text = std::fs::read_to_string(env.path().join("m.toml")).unwrap();
    let copy = write(
        env.path(),
        "copy.toml",
        &format!(
            "{}\n[stages.extra]\nkind = \"echo\"\ninputs.src = \"ingest\"\n",
            text.replacen("seed = 1", "seed = 2", 1)
        ),
    );
    let plan = pipeline::plan::load(&copy, &env.fx.reg).unwrap();
    let resolved = resolve(&plan, &env.fx.reg, &env.cache(), false).unwrap();
    let st = states(&plan, &resolved, &store, 60.0).unwrap();
    let m = env.path().join("m.toml").display().to_string();
    for (inst, state) in plan.instances.iter().zip(&st) {
        match inst.name.as_str() {
            "ingest" => assert_eq!(*state, State::UpToDate),
            "extra" => assert_eq!(*state, State::Missing),
            name => assert!(
                matches!(state, State::Stale { from: Some(f), .. } if *f == m),
                "{name}: {state:?}"
            ),
        }
    }

    let idx = plan.instance("eval[vision=a,fraction=0.01]").unwrap();
    let x = explain_last_build(&env, &plan, &resolved, &store, idx);
    assert_eq!(x.verdict, "changed");
    let baseline = x.baseline.as_ref().unwrap();
    assert_eq!(
        (baseline.manifest.as_str(), baseline.same_manifest),
        (m.as_str(), false)
    );
    let seed: Vec<_> = x
        .changes
        .iter()
        .filter_map(|c| match &c.what {
            pipeline::ops::ChangeKind::Parameter(p) => Some((c.depth, c.instance.as_str(), p)),
            _ => None,
        })
        .collect();
    assert_eq!(seed.len(), 1, "{x:?}");
    assert_eq!(
        (seed[0].0, seed[0].1, seed[0].2.name.as_str()),
        (2, "train[vision=a]", "seed")
    );
    assert_eq!(
        (seed[0].2.from.as_deref(), seed[0].2.to.as_deref()),
        (Some("1"), Some("2"))
    );
    let extra = plan.instance("extra").unwrap();
    let none = explain_last_build(&env, &plan, &resolved, &store, extra);
    assert_eq!(none.verdict, "never-built");

    // --against: the other plan's instance of the same name, compared without the store.
    let (other, other_resolved) = env.planned();
    let against = Against::Plan {
        plan: &other,
        resolved: &other_resolved,
    };
    let x = pipeline::ops::explain(&plan, &resolved, &store, &env.cache(), idx, &against).unwrap();
    assert!(
        x.lines
            .iter()
            .any(|l| l.trim() == "parameter `seed` changed: 1 -> 2"),
        "{:?}",
        x.lines
    );
    let same = plan.instance("ingest").unwrap();
    let x = pipeline::ops::explain(&plan, &resolved, &store, &env.cache(), same, &against).unwrap();
    assert_eq!(x.verdict, "same-key");
    let x =
        pipeline::ops::explain(&plan, &resolved, &store, &env.cache(), extra, &against).unwrap();
    assert_eq!(x.verdict, "not-in-other");
}
