//! The store's guarantees on a real local folder and object_store's in-memory store: corrupt
//! artifacts are found (`status` by size, `verify` by content) and rebuilt, manifest paths cannot
//! escape, unreadable records are stale, leases are fenced, gc deletes only what it owns.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::{registry, write, Fixture};
use pipeline::executor::{resolve, run, states, RunOptions, State};
use pipeline::lease::{self, Acquired, LeaseState};
use pipeline::ops::Against;
use pipeline::store::{Lease, Record};
use pipeline::Outcome;
use pipeline::{
    FingerprintCache, NoProgress, Plan, Resolved, StageKey, Store, StoreSettings, StoreUrl,
};

const CHAIN: &str =
    "[stages.a]\nkind = 'echo'\nparams.name = 'a'\n[stages.b]\nkind = 'echo'\ninputs.src = 'a'\n";

struct Env {
    dir: tempfile::TempDir,
    fx: Fixture,
}

impl Env {
    fn new(manifest: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "m.toml", manifest);
        Env {
            dir,
            fx: registry(1),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn planned(&self) -> (Plan, Resolved) {
        let plan = pipeline::plan::load(&self.path().join("m.toml"), &self.fx.reg).unwrap();
        let cache = FingerprintCache::new(self.path().join("cache"));
        let resolved = resolve(&plan, &self.fx.reg, &cache, false).unwrap();
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
        self.run_planned(&plan, &resolved, store, &RunOptions::default())
    }
    /// Runs an already resolved plan on `store` to the end (never cancelled).
    fn run_planned(
        &self,
        plan: &Plan,
        resolved: &Resolved,
        store: &Store,
        opts: &RunOptions,
    ) -> Vec<(String, Outcome)> {
        run(
            plan,
            &self.fx.reg,
            store,
            resolved,
            opts,
            Arc::new(NoProgress),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap()
        .outcomes
    }
    fn states(&self, store: &Store) -> Vec<State> {
        let (plan, resolved) = self.planned();
        states(&plan, &resolved, store, 60.0).unwrap()
    }
    fn key(&self, i: usize) -> StageKey {
        self.planned().1.keys[i].clone()
    }
    fn artifact(&self, i: usize) -> PathBuf {
        self.path()
            .join("artifacts/echo")
            .join(self.key(i).as_str())
    }
    fn items(&self) -> Vec<(String, StageKey)> {
        (0..2).map(|i| ("echo".to_string(), self.key(i))).collect()
    }
}

fn ran(outcomes: &[(String, Outcome)]) -> Vec<&str> {
    outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Ran { .. }))
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn a_truncated_file_is_corrupt_named_by_verify_and_rebuilt_by_run() {
    let env = Env::new(CHAIN);
    let store = env.store(&env.local());
    assert_eq!(ran(&env.run(&store)), ["a", "b"]);
    let good = std::fs::read(env.artifact(0).join("out.txt")).unwrap();
    std::fs::write(env.artifact(0).join("out.txt"), &good[..3]).unwrap();

    let st = env.states(&store);
    let State::Corrupt { bad } = &st[0] else {
        panic!("{st:?}")
    };
    assert_eq!(bad[0].path, "out.txt");
    assert!(bad[0].problem.contains("3 bytes"), "{bad:?}");
    assert_eq!(st[1], State::UpToDate);
    let (plan, resolved) = env.planned();
    let cache = FingerprintCache::new(env.path().join("cache"));
    let why = pipeline::ops::explain(&plan, &resolved, &store, &cache, 0, &Against::LastBuild)
        .unwrap()
        .lines;
    assert!(
        why[1].starts_with("would run: its artifact is corrupt (out.txt: 3 bytes"),
        "{why:?}"
    );

    let v = pipeline::ops::verify(&store, &env.items(), false).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].report.bad.len(), 1);
    assert!(v[1].report.bad.is_empty());

    // The run moves the corrupt artifact aside and rebuilds exactly it.
    assert_eq!(ran(&env.run(&store)), ["a"]);
    assert_eq!(
        std::fs::read(env.artifact(0).join("out.txt")).unwrap(),
        good
    );
    assert!(env.states(&store).iter().all(|s| *s == State::UpToDate));
    let quarantined = std::fs::read_dir(env.path().join("artifacts/_quarantine/echo"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1);
    assert!(pipeline::ops::verify(&store, &env.items(), false)
        .unwrap()
        .iter()
        .all(|v| v.report.bad.is_empty()));
}

#[test]
fn a_deleted_file_is_corrupt_and_a_flipped_byte_is_found_by_verify_only() {
    let env = Env::new(CHAIN);
    let store = env.store(&env.local());
    env.run(&store);
    std::fs::remove_file(env.artifact(1).join("sub/big.bin")).unwrap();
    let st = env.states(&store);
    assert!(
        matches!(&st[1], State::Corrupt { bad } if bad[0].path == "sub/big.bin" && bad[0].problem == "missing"),
        "{st:?}"
    );
    env.run(&store);

    // Same size, other content: a stat cannot see it; verify can, and quarantine fixes it.
    let p = env.artifact(0).join("out.txt");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(env.states(&store)[0], State::UpToDate);
    let v = pipeline::ops::verify(&store, &env.items(), true).unwrap();
    assert!(
        v[0].report.bad[0].problem.contains("content digest"),
        "{v:?}"
    );
    let to = v[0].quarantined.as_ref().expect("moved aside");
    assert!(env
        .path()
        .join("artifacts")
        .join(to)
        .join("_manifest.json")
        .is_file());
    assert_eq!(env.states(&store)[0], State::Missing);
    assert_eq!(ran(&env.run(&store)), ["a"]);
    assert!(pipeline::ops::verify(&store, &env.items(), false)
        .unwrap()
        .iter()
        .all(|v| v.report.bad.is_empty()));
}

#[test]
fn a_manifest_path_that_escapes_the_artifact_is_refused_before_any_write() {
    // A remote-like store (memory): downstream readers download upstream artifacts.
    let env = Env::new(CHAIN);
    let store = env.store(&StoreUrl::Memory);
    env.run(&store);
    let key = env.key(0);
    let rel = Store::manifest_path("echo", &key);
    let mut m: serde_json::Value =
        serde_json::from_slice(&store.get(&rel).unwrap().unwrap()).unwrap();
    m["files"][0]["path"] = "../../../escaped.txt".into();
    store
        .put(&rel, serde_json::to_vec(&m).unwrap().into(), false)
        .unwrap();
    // The downstream stage's copy in the cache folder is gone (a fresh machine).
    std::fs::remove_dir_all(env.path().join("cache/artifacts")).unwrap();

    let err = store.local_artifact("echo", &key).unwrap_err().to_string();
    assert!(
        err.contains("_manifest.json") && err.contains("`..` component"),
        "{err}"
    );
    assert!(!env.path().join("escaped.txt").exists());
    assert!(!env.path().join("cache/escaped.txt").exists());
    // status calls it corrupt; verify names the manifest.
    assert!(
        matches!(&env.states(&store)[0], State::Corrupt { bad } if bad[0].path == "_manifest.json")
    );
    let v = pipeline::ops::verify(&store, &env.items(), false).unwrap();
    assert_eq!(v[0].report.bad[0].path, "_manifest.json");

    for bad in [
        "/etc/passwd",
        "a//b",
        "./a",
        "a/../../b",
        "",
        "a\\b",
        "_manifest.json",
    ] {
        m["files"][0]["path"] = bad.into();
        let parsed: pipeline::store::ArtifactManifest = serde_json::from_value(m.clone()).unwrap();
        assert!(parsed.validate("echo", &key).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn empty_or_truncated_records_are_stale_with_a_warning_not_fatal() {
    let env = Env::new(CHAIN);
    let store = env.store(&env.local());
    let (plan, resolved) = env.planned();
    let root = env.path().join("artifacts");
    write(&root, &Store::lock_path("echo", &resolved.keys[0]), "");
    write(
        &root,
        &Store::lock_path("echo", &resolved.keys[1]),
        "{\"owner\": \"x",
    );
    write(
        &root,
        &Store::index_path(&plan.manifest_id, "a"),
        "{\"instance",
    );
    write(
        &root,
        &format!(
            "{}/_error.json",
            Store::failed_dir("echo", &resolved.keys[1])
        ),
        "",
    );

    assert_eq!(env.states(&store), [State::Missing, State::Missing]);
    let warnings = store.take_warnings();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[0].contains("_locks/echo/") && warnings[0].contains("stale"),
        "{warnings:?}"
    );
    assert_eq!(ran(&env.run(&store)), ["a", "b"]);
    // Released after the build: no lease is left behind.
    assert!(!root
        .join(Store::lock_path("echo", &resolved.keys[0]))
        .exists());
}

fn template(owner: &str) -> Lease {
    Lease {
        owner: owner.into(),
        host: "test".into(),
        pid: std::process::id(),
        instance: "a".into(),
        heartbeat_unix: 0.0,
        token: String::new(),
        host_id: String::new(),
        released: false,
        activity_unix: None,
    }
}

fn held(a: Acquired) -> lease::HeldLease {
    match a {
        Acquired::Held { lease, .. } => *lease,
        Acquired::Complete => panic!("complete"),
    }
}

/// One runner holds a lease; two others that both saw it stale race to take it over with a
/// compare-and-swap on the version they read: exactly one wins, every time. The first owner can
/// then neither refresh nor release the new owner's lease, and knows it lost it.
fn fenced_takeover(store: &Store) {
    let key = StageKey::parse(&"ab".repeat(32)).unwrap();
    let path = Store::lock_path("echo", &key);
    let never = AtomicBool::new(false);
    let mut first = held(
        lease::acquire(
            store,
            "echo",
            &key,
            &template("first"),
            60.0,
            &mut |_| {},
            &never,
        )
        .unwrap(),
    );
    assert!(matches!(
        lease::state(store, "echo", &key, 60.0).unwrap(),
        LeaseState::Live { .. }
    ));
    assert!(lease::refresh(store, &mut first, 60.0));
    for round in 0..20 {
        let Record::Found { version, .. } = store.get_record::<Lease>(&path).unwrap() else {
            panic!("no lease")
        };
        let barrier = std::sync::Barrier::new(2);
        let won: Vec<bool> = std::thread::scope(|s| {
            let racers: Vec<_> = ["second", "third"]
                .iter()
                .map(|who| {
                    let (barrier, version, path) = (&barrier, &version, &path);
                    s.spawn(move || {
                        let bytes =
                            serde_json::to_vec(&template(&format!("{who}-{round}"))).unwrap();
                        barrier.wait();
                        store
                            .put_if_version(path, bytes.into(), version)
                            .unwrap()
                            .is_some()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
    }
    // The first owner lost it: refresh fails, release leaves the new owner's lease alone.
    assert!(!lease::refresh(store, &mut first, 60.0));
    assert!(first.is_lost());
    lease::release(store, &mut first).unwrap();
    let Record::Found { value, .. } = store.get_record::<Lease>(&path).unwrap() else {
        panic!("the new owner's lease is gone")
    };
    assert!(value.owner.ends_with("-19") && !value.released, "{value:?}");
    // No temporary files are left beside the lease.
    if let Some(root) = store.local_root() {
        let names: Vec<String> = std::fs::read_dir(root.join("_locks/echo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        // (the `.cas` file is the compare-and-swap lock, kept for the next one)
        let mut names = names;
        names.sort();
        assert_eq!(names, [format!(".{key}.json.cas"), format!("{key}.json")]);
    }
}

#[test]
fn a_lease_taken_over_is_lost_by_its_old_owner_locally() {
    let env = Env::new(CHAIN);
    fenced_takeover(&env.store(&env.local()));
}

#[test]
fn a_lease_taken_over_is_lost_by_its_old_owner_in_memory() {
    let env = Env::new(CHAIN);
    fenced_takeover(&env.store(&StoreUrl::Memory));
}

/// A heartbeat whose first attempt landed but whose answer was lost: the client's retry fails its
/// condition against the runner's own write. The runner reads the record back, finds exactly the
/// heartbeat it sent, and keeps the lease; had another runner written, it gives the lease up.
fn heartbeat_answer_lost(store: &Store) {
    let key = StageKey::parse(&"cd".repeat(32)).unwrap();
    let never = AtomicBool::new(false);
    let mut held = held(
        lease::acquire(
            store,
            "echo",
            &key,
            &template("me"),
            60.0,
            &mut |_| {},
            &never,
        )
        .unwrap(),
    );
    let ours: Lease = store.get_json(&held.path).unwrap().unwrap();
    // The first attempt of the heartbeat at t = 1000.5 landed; its answer never came back.
    let landed = Lease {
        heartbeat_unix: 1000.5,
        ..ours.clone()
    };
    store
        .put(&held.path, lease::record_bytes(&landed), false)
        .unwrap();
    assert!(lease::refresh_at(store, &mut held, 1000.5, 60.0));
    assert!(!held.is_lost());
    // The version read back is the one held now: the next heartbeat is an ordinary one.
    assert!(lease::refresh(store, &mut held, 60.0));

    // Another runner's write in between: the lease is lost, whatever the heartbeat.
    let theirs = Lease {
        heartbeat_unix: 2000.0,
        ..template("other")
    };
    store
        .put(&held.path, lease::record_bytes(&theirs), false)
        .unwrap();
    assert!(!lease::refresh_at(store, &mut held, 2000.0, 60.0));
    assert!(held.is_lost());
}

#[test]
fn a_heartbeat_whose_answer_was_lost_keeps_the_lease_locally() {
    let env = Env::new(CHAIN);
    heartbeat_answer_lost(&env.store(&env.local()));
}

#[test]
fn a_heartbeat_whose_answer_was_lost_keeps_the_lease_in_memory() {
    let env = Env::new(CHAIN);
    heartbeat_answer_lost(&env.store(&StoreUrl::Memory));
}

#[test]
fn a_lease_of_a_dead_process_on_this_host_is_stale_at_once() {
    let env = Env::new(CHAIN);
    let store = env.store(&env.local());
    let key = env.key(0);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let lease = Lease {
        pid: dead,
        host_id: lease::host_id(),
        token: "t".into(),
        ..template("dead")
    };
    store
        .put_json(&Store::lock_path("echo", &key), &lease, true)
        .unwrap();
    assert!(matches!(
        lease::state(&store, "echo", &key, 60.0).unwrap(),
        LeaseState::Stale { .. }
    ));
    // Another pid namespace or host with the same name: judged by time only, so live.
    let other = Lease {
        host_id: format!("{}-other-container", lease::host_id()),
        ..lease
    };
    store
        .put_json(&Store::lock_path("echo", &key), &other, false)
        .unwrap();
    assert!(matches!(
        lease::state(&store, "echo", &key, 60.0).unwrap(),
        LeaseState::Live { .. }
    ));
}

#[test]
fn gc_deletes_only_what_the_store_owns() {
    let env = Env::new(CHAIN);
    let store = env.store(&env.local());
    env.run(&store);
    let root = env.path().join("artifacts");
    let items = env.items();
    let (a, b) = (&items[0].1, &items[1].1);
    let orphan = StageKey::parse(&"cd".repeat(32)).unwrap();
    // What gc does not own.
    for foreign in [
        "notes/todo.txt",
        "tensorboard/run1/events",
        "echo/not-a-key/x",
        "README.txt",
        "_other_tool/x",
    ] {
        write(&root, foreign, "not yours");
    }
    // Resume state of a referenced key (kept) and of an unreferenced one (deleted).
    write(&root, &format!("_resume/echo/{a}/state.bin"), "epoch 3");
    write(&root, &format!("_resume/echo/{orphan}/state.bin"), "old");
    // A job record whose job gc cannot look up (kept), and a claim abandoned long ago.
    let job = |id: &str| {
        format!(
            "{{\"instance\":\"x\",\"job_id\":\"{id}\",\"owner\":\"o\",\"unix\":0,\"log\":\"\"}}"
        )
    };
    write(&root, &format!("_jobs/echo/{orphan}.json"), &job("4242"));
    // Staging: another host's fresh folder (kept), this host's dead runner's folder (deleted).
    let owner = |host_id: String, pid: u32| {
        serde_json::to_string(&pipeline::store::StagingOwner {
            host_id,
            pid,
            kind: "echo".into(),
            key: orphan.clone(),
        })
        .unwrap()
    };
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    write(
        &root,
        "_staging/elsewhere/owner.json",
        &owner("node7/boot/ns".into(), 1),
    );
    write(
        &root,
        "_staging/dead/owner.json",
        &owner(lease::host_id(), dead),
    );

    // The manifest now references `a` only.
    let referenced: HashSet<(String, StageKey)> = [("echo".to_string(), a.clone())].into();
    let kinds: HashSet<String> = ["echo", "other"].iter().map(|k| k.to_string()).collect();
    let scope = pipeline::ops::GcScope {
        kinds: &kinds,
        referenced: &referenced,
        lease_secs: 60.0,
        job_alive: &|_| None,
    };
    let report = pipeline::ops::gc(&store, &scope, false).unwrap();
    let deleted: HashSet<&str> = report.deleted.iter().map(|(p, _)| p.as_str()).collect();
    let expect: HashSet<String> = [
        format!("echo/{b}"),
        format!("_resume/echo/{orphan}"),
        "_staging/dead".to_string(),
    ]
    .into();
    assert_eq!(
        deleted,
        expect.iter().map(String::as_str).collect::<HashSet<_>>()
    );
    let skipped: Vec<&str> = report.skipped.iter().map(|(p, _)| p.as_str()).collect();
    for s in [
        "README.txt",
        "notes/",
        "tensorboard/",
        "_other_tool/",
        "echo/not-a-key/",
        "_staging/elsewhere",
    ] {
        assert!(skipped.contains(&s), "{s} not reported: {skipped:?}");
    }
    assert!(
        skipped.iter().any(|s| s.starts_with("_jobs/echo/")),
        "{skipped:?}"
    );
    for kept in [
        "notes/todo.txt",
        "tensorboard/run1/events",
        "echo/not-a-key/x",
        "README.txt",
        "_other_tool/x",
        "_staging/elsewhere/owner.json",
    ] {
        assert!(root.join(kept).exists(), "{kept} was deleted");
    }
    assert!(root.join(format!("_resume/echo/{a}/state.bin")).exists());
    assert!(root.join(format!("_jobs/echo/{orphan}.json")).exists());
    assert!(root.join(format!("echo/{a}/_manifest.json")).exists());
    assert!(!root.join(format!("echo/{b}")).exists());

    // With a job lookup that says the job ended, its record goes.
    let scope = pipeline::ops::GcScope {
        job_alive: &|_| Some(false),
        ..scope
    };
    let report = pipeline::ops::gc(&store, &scope, false).unwrap();
    assert_eq!(report.deleted.len(), 1, "{:?}", report.deleted);
    assert!(!root.join(format!("_jobs/echo/{orphan}.json")).exists());
}

mod paths {
    use pipeline::store::check_rel_path;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    proptest! {
        /// Whatever a manifest lists, an accepted path joined to a folder stays inside it.
        #[test]
        fn accepted_paths_stay_inside_the_folder(
            parts in prop::collection::vec("[a-z._/\\\\]{0,4}", 1..5),
            absolute in any::<bool>(),
        ) {
            let p = format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"));
            if check_rel_path(&p).is_ok() {
                prop_assert!(Path::new(&p).components().all(|c| matches!(c, Component::Normal(_))), "{p:?}");
                let base = Path::new("/base/artifact");
                prop_assert!(base.join(&p).starts_with(base));
            }
        }
    }
}

#[test]
fn a_runner_whose_lease_is_taken_over_stops_and_publishes_nothing() {
    let env = Env::new("[stages.a]\nkind = 'echo'\nparams.sleep_ms = 1500\n");
    let store = env.store(&env.local());
    let (plan, resolved) = env.planned();
    let key = resolved.keys[0].clone();
    let path = Store::lock_path("echo", &key);
    let outcomes = std::thread::scope(|s| {
        // Another runner takes the lease over while the stage runs (as if this one had been
        // suspended past the timeout): a compare-and-swap on the version it read.
        s.spawn(|| {
            let t0 = std::time::Instant::now();
            loop {
                if let Record::Found { version, .. } = store.get_record::<Lease>(&path).unwrap() {
                    let thief = serde_json::to_vec(&template("thief")).unwrap();
                    if store
                        .put_if_version(&path, thief.into(), &version)
                        .unwrap()
                        .is_some()
                    {
                        break;
                    }
                }
                assert!(
                    t0.elapsed().as_secs() < 10,
                    "the runner never took the lease"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let opts = RunOptions {
            lease_secs: 2.0, // heartbeat every 0.5 s
            ..RunOptions::default()
        };
        env.run_planned(&plan, &resolved, &store, &opts)
    });
    assert!(
        matches!(&outcomes[0].1, Outcome::Failed { error, .. } if error.contains("lost its lease")),
        "{outcomes:?}"
    );
    // Nothing committed, no failure record over the new owner's key, its lease untouched.
    assert!(!store.is_complete("echo", &key).unwrap());
    assert!(store
        .get(&format!("{}/_error.json", Store::failed_dir("echo", &key)))
        .unwrap()
        .is_none());
    let Record::Found { value, .. } = store.get_record::<Lease>(&path).unwrap() else {
        panic!("the new owner's lease is gone")
    };
    assert_eq!(value.owner, "thief");
    assert_eq!(
        std::fs::read_dir(env.path().join("artifacts/_staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn gc_removes_attempt_folders_no_manifest_names_once_older_than_the_lease_timeout() {
    // The memory store publishes like S3: each attempt in its own folder.
    let env = Env::new(CHAIN);
    let store = env.store(&StoreUrl::Memory);
    env.run(&store);
    let items = env.items();
    let a = &items[0].1;
    // A runner died mid-upload into a referenced key; another into the unbuilt-yet key `orphan`.
    let dead = format!("echo/{a}/_attempt-dead/out.txt");
    store.put(&dead, "half".into(), false).unwrap();
    let committed = store.read_manifest("echo", a).unwrap().unwrap();
    let live_file = committed.file_rel("out.txt");
    let referenced: HashSet<(String, StageKey)> = items.iter().cloned().collect();
    let kinds: HashSet<String> = ["echo".to_string()].into();
    let gc = |lease_secs: f64| {
        let scope = pipeline::ops::GcScope {
            kinds: &kinds,
            referenced: &referenced,
            lease_secs,
            job_alive: &|_| None,
        };
        pipeline::ops::gc(&store, &scope, false).unwrap()
    };
    assert!(gc(60.0).deleted.is_empty(), "too young to judge");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let report = gc(0.01);
    let deleted: Vec<&str> = report.deleted.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(deleted, [format!("echo/{a}/_attempt-dead")]);
    assert!(store.get(&dead).unwrap().is_none());
    assert!(store.get(&live_file).unwrap().is_some());
    assert_eq!(env.states(&store), [State::UpToDate, State::UpToDate]);
}

#[test]
fn two_runners_with_short_leases_on_a_local_store_both_succeed_and_build_each_key_once() {
    // Heartbeats every 0.5 s while the other runner keeps trying to create the same leases: a
    // compare-and-swap must never make a held lease look absent (it would be created by the
    // other runner, and the holder would lose it).
    let env = Env::new(
        "[matrix]\ni = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]\n\
         [stages.s]\nkind = 'echo'\nforeach = ['i']\nparams = { seed = '${i}', sleep_ms = 300 }\n",
    );
    let (plan, resolved) = env.planned();
    let reports: Vec<Vec<(String, Outcome)>> = std::thread::scope(|s| {
        let runners: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let store = env.store(&env.local());
                    let opts = RunOptions {
                        jobs: 3,
                        lease_secs: 2.0,
                        ..RunOptions::default()
                    };
                    env.run_planned(&plan, &resolved, &store, &opts)
                })
            })
            .collect();
        runners.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for r in &reports {
        assert!(
            r.iter()
                .all(|(_, o)| matches!(o, Outcome::Ran { .. } | Outcome::BuiltElsewhere)),
            "{r:?}"
        );
    }
    assert_eq!(env.fx.runs.load(std::sync::atomic::Ordering::SeqCst), 20);
}
