//! The store's guarantees on S3, against a real S3-compatible server (moto on 127.0.0.1):
//! attempt folders, `status` saying `corrupt`, `verify` naming the bad file, `run` rebuilding it,
//! fenced lease takeover with `If-Match`, and a crafted remote manifest never followed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;

mod common;

use common::{walk, Case};

use pipeline::lease::{self, Acquired};
use pipeline::store::{Lease, Record};
use pipeline::{StageKey, Store, StoreSettings, StoreUrl};

#[test]
fn s3_a_deleted_file_is_corrupt_named_by_verify_and_rebuilt() {
    let moto = common::moto::start("chaos");
    let case = Case::with_env(moto.env());
    case.write(
        "m.toml",
        "store = 's3://chaos/p'\n[stages.a]\nkind = 'command'\nparams.run = 'echo hello > $OUT/a.txt; mkdir $OUT/d; echo x > $OUT/d/b.txt'\n\
         [stages.b]\nkind = 'command'\ninputs.deps = 'a'\nparams.run = 'cat $IN_DEPS/a.txt $IN_DEPS/d/b.txt > $OUT/c.txt'\n",
    );
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    // Each artifact's files live in its attempt folder, named by the manifest.
    let keys = moto.keys("chaos", "p/command/");
    let a_txt = keys
        .iter()
        .find(|k| k.ends_with("/a.txt"))
        .expect("a.txt uploaded")
        .clone();
    assert!(a_txt.contains("/_attempt-"), "{keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.contains("/_attempt-") && k.ends_with("/_log.txt")),
        "{keys:?}"
    );
    let (code, out) = case.go(&["verify", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("verified 2 artifact(s), 3 file(s)") && out.contains(": 0 bad"),
        "{out}"
    );

    // Delete a file of the upstream artifact behind the store's back.
    let store = s3_store(&moto, case.path(), "p");
    store.delete(a_txt.strip_prefix("p/").unwrap()).unwrap();
    assert!(!moto.keys("chaos", "p/command/").contains(&a_txt));
    let (_, status) = case.go(&["status", "m.toml"]);
    assert!(
        status.contains("corrupt") && status.contains("a.txt: missing"),
        "{status}"
    );
    let (code, out) = case.go(&["verify", "m.toml"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("bad  s3://chaos/p/command/") && out.contains("/a.txt: missing"),
        "{out}"
    );
    // The attempt folder's name is random.
    let at = out
        .find("_attempt-")
        .expect("names the object in its attempt folder")
        + 9;
    let out = format!("{}[random]{}", &out[..at], &out[at + 16..]);
    insta::assert_snapshot!("verify_names_the_bad_file", out);

    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 ran, 1 up to date"), "{out}");
    let (code, out) = case.go(&["verify", "m.toml", "--all"]);
    assert_eq!(code, Some(0), "{out}");
    // The corrupt one was moved aside, manifest first.
    assert!(!moto.keys("chaos", "p/_quarantine/command/").is_empty());
}

fn s3_store(moto: &common::moto::Moto, dir: &Path, prefix: &str) -> Store {
    Store::open(
        &StoreUrl::S3 {
            bucket: "chaos".into(),
            prefix: prefix.into(),
        },
        &StoreSettings {
            aws: moto.env(),
            ..Default::default()
        },
        &dir.join("cache"),
    )
    .unwrap()
}

fn template(owner: &str) -> Lease {
    Lease {
        owner: owner.into(),
        host: "test".into(),
        pid: 1,
        instance: "a".into(),
        heartbeat_unix: 0.0,
        token: String::new(),
        host_id: String::new(),
        released: false,
        activity_unix: None,
    }
}

/// The lease of `kind/key` for `owner`, taken while nothing of it is complete.
fn hold(store: &Store, kind: &str, key: &StageKey, owner: &str) -> Box<lease::HeldLease> {
    let never = AtomicBool::new(false);
    let Acquired::Held { lease, .. } = lease::acquire(
        store,
        kind,
        key,
        &template(owner),
        60.0,
        &mut |_| {},
        &never,
    )
    .unwrap() else {
        panic!("nothing is complete")
    };
    lease
}

#[test]
fn s3_lease_takeover_is_a_compare_and_swap_and_the_old_owner_loses() {
    let moto = common::moto::start("chaos");
    let dir = tempfile::tempdir().unwrap();
    let store = s3_store(&moto, dir.path(), "leases");
    let key = StageKey::parse(&"ef".repeat(32)).unwrap();
    let path = Store::lock_path("echo", &key);
    let mut first = hold(&store, "echo", &key, "first");
    assert!(lease::refresh(&store, &mut first, 60.0));
    for round in 0..5 {
        let Record::Found { version, .. } = store.get_record::<Lease>(&path).unwrap() else {
            panic!("no lease")
        };
        let barrier = std::sync::Barrier::new(2);
        let won: Vec<bool> = std::thread::scope(|s| {
            let racers: Vec<_> = ["second", "third"]
                .iter()
                .map(|who| {
                    let (barrier, version, path, store) = (&barrier, &version, &path, &store);
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
    assert!(!lease::refresh(&store, &mut first, 60.0));
    lease::release(&store, &mut first).unwrap();
    let Record::Found { value, .. } = store.get_record::<Lease>(&path).unwrap() else {
        panic!("the new owner's lease is gone")
    };
    assert!(value.owner.ends_with("-4") && !value.released, "{value:?}");
}

#[test]
fn s3_a_crafted_manifest_path_never_writes_outside_the_cache() {
    let moto = common::moto::start("chaos");
    let case = Case::with_env(moto.env());
    case.write(
        "m.toml",
        "store = 's3://chaos/q'\n[stages.a]\nkind = 'command'\nparams.run = 'echo hello > $OUT/a.txt'\n\
         [stages.b]\nkind = 'command'\ninputs.deps = 'a'\nparams.run = 'cat $IN_DEPS/a.txt > $OUT/c.txt'\n",
    );
    let (code, out) = case.go(&["run", "m.toml", "--only", "a"]);
    assert_eq!(code, Some(0), "{out}");
    let store = s3_store(&moto, case.path(), "q");
    let a_dir = moto
        .keys("chaos", "q/command/")
        .into_iter()
        .find(|k| k.ends_with("/_manifest.json"))
        .unwrap();
    let rel = a_dir.strip_prefix("q/").unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&store.get(rel).unwrap().unwrap()).unwrap();
    m["files"][0]["path"] = "../../../../escaped.txt".into();
    store
        .put(rel, serde_json::to_vec(&m).unwrap().into(), false)
        .unwrap();

    // status and verify call it corrupt; the run moves it aside and rebuilds it, then the
    // downstream stage downloads the rebuilt one.
    let (_, status) = case.go(&["status", "m.toml"]);
    assert!(
        status.contains("corrupt") && status.contains("`..` component"),
        "{status}"
    );
    let (code, out) = case.go(&["verify", "m.toml"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("/_manifest.json: file path"), "{out}");
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 ran"), "{out}");
    let escaped: Vec<_> = walk(case.path())
        .into_iter()
        .filter(|p| p.ends_with("escaped.txt"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
}

/// `gc` of a store holding `command` artifacts of which no manifest references any, judging
/// leases and uploads by `lease_secs`.
fn gc_nothing_referenced(store: &Store, lease_secs: f64) -> pipeline::ops::GcReport {
    let kinds: HashSet<String> = ["command".to_string()].into();
    let scope = pipeline::ops::GcScope {
        kinds: &kinds,
        referenced: &HashSet::new(),
        lease_secs,
        job_alive: &|_| None,
    };
    pipeline::ops::gc(store, &scope, false).unwrap()
}

#[test]
fn s3_gc_aborts_the_multipart_upload_of_a_runner_that_is_gone() {
    let moto = common::moto::start("chaos");
    let dir = tempfile::tempdir().unwrap();
    let store = s3_store(&moto, dir.path(), "mp");
    // A runner starts uploading a large file of an attempt, then dies (nothing completes it).
    let key = "ab".repeat(32);
    let rel = format!("command/{key}/_attempt-x/big.bin");
    let (record, record_rel, recorded) = store.begin_upload(&rel).unwrap();
    assert!(recorded.unwrap());
    let uploads = |m: &common::moto::Moto| m.http("GET", "/chaos?uploads");
    assert!(
        uploads(&moto).contains(&record.upload_id),
        "{}",
        uploads(&moto)
    );

    let gc = |lease_secs: f64| gc_nothing_referenced(&store, lease_secs);
    // Younger than the lease timeout: kept (its runner may be alive).
    assert!(gc(60.0).deleted.is_empty());
    assert!(uploads(&moto).contains(&record.upload_id));
    // Older than the lease timeout, no live lease on its key: aborted, record removed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let report = gc(0.5);
    assert_eq!(report.deleted, [(record_rel.clone(), 0)]);
    assert!(
        !uploads(&moto).contains(&record.upload_id),
        "{}",
        uploads(&moto)
    );
    assert!(store.get(&record_rel).unwrap().is_none());
}

/// An upload that no record names (its runner died between starting it and recording it) is
/// found by listing the bucket's uploads (`ListMultipartUploads`, signed by us: object_store
/// cannot list them) and aborted once old; an upload outside the store's artifact folders is
/// another tool's and is only reported.
#[test]
fn s3_gc_lists_and_aborts_unrecorded_uploads_it_owns_and_skips_foreign_ones() {
    let moto = common::moto::start("chaos");
    let dir = tempfile::tempdir().unwrap();
    let store = s3_store(&moto, dir.path(), "mp");
    let key = "cd".repeat(32);
    let ours = format!("command/{key}/_attempt-y/big.bin");
    let mut ids = Vec::new();
    for rel in [ours.as_str(), "notes/big.bin"] {
        let (record, record_rel, recorded) = store.begin_upload(rel).unwrap();
        assert!(recorded.unwrap());
        store.delete(&record_rel).unwrap(); // as if the runner died before recording it
        ids.push(record.upload_id);
    }
    let pending = store.pending_uploads().unwrap().expect("S3 lists uploads");
    let mut listed: Vec<(&str, &str)> = pending
        .iter()
        .map(|u| (u.key.as_str(), u.upload_id.as_str()))
        .collect();
    listed.sort();
    let mut want = vec![
        (ours.as_str(), ids[0].as_str()),
        ("notes/big.bin", ids[1].as_str()),
    ];
    want.sort();
    assert_eq!(listed, want, "paths are relative to the store's prefix");

    let gc = |lease_secs: f64| gc_nothing_referenced(&store, lease_secs);
    let uploads = |m: &common::moto::Moto| m.http("GET", "/chaos?uploads");
    // moto reports every upload as initiated in 2010 (a constant in its responses), so here the
    // age rule always holds and what protects a live runner's upload is its lease: kept while a
    // live lease holds the key.
    let key = StageKey::parse(&key).unwrap();
    let mut held = hold(&store, "command", &key, "uploader");
    assert!(gc(60.0).deleted.is_empty());
    assert!(uploads(&moto).contains(&ids[0]));
    lease::release(&store, &mut held).unwrap();
    let report = gc(60.0);
    assert_eq!(report.deleted.len(), 1, "{:?}", report.deleted);
    assert!(report.deleted[0].0.contains(&ours), "{:?}", report.deleted);
    assert!(
        report
            .skipped
            .iter()
            .any(|(what, why)| what.contains("notes/big.bin") && why.contains("does not own")),
        "{:?}",
        report.skipped
    );
    let left = uploads(&moto);
    assert!(!left.contains(&ids[0]), "{left}");
    assert!(
        left.contains(&ids[1]),
        "the foreign upload is left alone: {left}"
    );
}

#[test]
fn s3_a_publish_that_fails_keeps_the_output_and_the_next_run_publishes_it_without_recomputing() {
    let moto = common::moto::start("chaos");
    let port = moto.port;
    let mut env = moto.env();
    env.push(("ADAPTOR_S3_RETRIES".into(), "1".into()));
    let case = Case::with_env(env);
    let runs = case.path().join("runs.log");
    // The stage computes its output, then the S3 server dies before the runner publishes it.
    case.write(
        "m.toml",
        &format!(
            "store = 's3://chaos/f'\n[stages.a]\nkind = 'command'\nparams.run = 'echo computed >> {}; head -c 100 /dev/urandom > $OUT/x.bin; kill {}; sleep 1'\n",
            runs.display(),
            moto.pid()
        ),
    );
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("publishing failed")
            && out.contains("next run publishes it instead of recomputing"),
        "{out}"
    );
    drop(moto);
    let kept = walk(&case.path().join("cache/unpublished"));
    assert!(kept.iter().any(|p| p.ends_with("out/x.bin")), "{kept:?}");

    // The server is back (empty, as after a restart): the kept output is published, not rebuilt.
    let moto = common::moto::start_on(port, "chaos");
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 ran"), "{out}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "computed\n");
    assert!(walk(&case.path().join("cache/unpublished")).is_empty());
    let (code, out) = case.go(&["verify", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("verified 1 artifact(s), 1 file(s), 100 B: 0 bad"),
        "{out}"
    );
    drop(moto);
}

#[test]
fn s3_gc_skips_what_it_does_not_own_and_keeps_job_records_it_cannot_judge() {
    let moto = common::moto::start("chaos");
    let case = Case::with_env(moto.env());
    case.write(
        "m.toml",
        "store = 's3://chaos/g'\n[matrix]\ni = [1, 2]\n[stages.a]\nkind = 'command'\nforeach = ['i']\nparams.run = 'echo ${i} > $OUT/a.txt'\n",
    );
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    let store = s3_store(&moto, case.path(), "g");
    let keys: Vec<String> = moto
        .keys("chaos", "g/command/")
        .iter()
        .filter(|k| k.ends_with("/_manifest.json"))
        .map(|k| k.split('/').nth(2).unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2);
    let foreign = [
        "README.txt",
        "notes/todo.txt",
        "tensorboard/run1/events",
        "command/not-a-key/x",
    ];
    for f in foreign {
        store.put(f, "not yours".into(), false).unwrap();
    }
    let orphan = "cd".repeat(32);
    store
        .put(
            &format!("_jobs/command/{orphan}.json"),
            r#"{"instance":"x","job_id":"777","owner":"o","unix":0,"log":""}"#.into(),
            false,
        )
        .unwrap();
    // The manifest now has one instance: the other key's artifact goes, nothing else.
    case.write(
        "m.toml",
        "store = 's3://chaos/g'\n[matrix]\ni = [1]\n[stages.a]\nkind = 'command'\nforeach = ['i']\nparams.run = 'echo ${i} > $OUT/a.txt'\n",
    );
    let (code, out) = case.go(&["gc", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("deleted 1 folder(s)") && out.contains("kept 1"),
        "{out}"
    );
    for s in [
        "skipped README.txt: an object gc does not own",
        "skipped notes/: not a stage kind this binary knows",
        "skipped tensorboard/: not a stage kind this binary knows",
        "skipped command/not-a-key/: not named by a key",
        "cannot tell whether job 777 still runs",
    ] {
        assert!(out.contains(s), "{s}: {out}");
    }
    for f in foreign {
        assert!(store.get(f).unwrap().is_some(), "{f} was deleted");
    }
    // Slurm cannot be asked here (no cluster): the job record is kept.
    assert!(store
        .get(&format!("_jobs/command/{orphan}.json"))
        .unwrap()
        .is_some());
    let (code, out) = case.go(&["status", "m.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("all 1 instance(s) up to date"), "{out}");
}

/// `path` names the object on S3; `pull` copies a verified artifact out (and refuses one whose
/// object changed behind the store's back, leaving nothing complete); `run --force` commits a new
/// attempt by a conditional overwrite of `_manifest.json`, leaving the old attempt for gc.
#[test]
fn s3_path_pull_and_a_forced_rebuild() {
    let moto = common::moto::start("chaos");
    let case = Case::with_env(moto.env());
    case.write(
        "m.toml",
        "store = 's3://chaos/pp'\n[stages.a]\nkind = 'command'\nparams.run = 'echo hello > $OUT/a.txt; date +%s%N > $OUT/t.txt'\n",
    );
    case.ok(&["run", "m.toml"]);
    let stdout = |args: &[&str]| {
        let out = case.run(args);
        assert!(out.status.success(), "{}", common::text(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    };
    let url = stdout(&["path", "m.toml", "a", "a.txt"]);
    assert!(
        url.starts_with("s3://chaos/pp/command/")
            && url.contains("/_attempt-")
            && url.ends_with("/a.txt"),
        "{url}"
    );
    let rel = url.strip_prefix("s3://chaos/").unwrap().to_string();
    assert!(moto.keys("chaos", "pp/command/").contains(&rel));

    let out = case.ok(&["pull", "m.toml", "--to", "out"]);
    assert!(out.contains("1 copied (2 file(s), 26 B)"), "{out}");
    let copies: Vec<_> = walk(&case.path().join("out"));
    let a_txt = copies.iter().find(|p| p.ends_with("a.txt")).expect("a.txt");
    assert_eq!(std::fs::read_to_string(a_txt).unwrap(), "hello\n");
    let manifest = std::fs::read_to_string(a_txt.with_file_name("_manifest.json")).unwrap();
    assert!(!manifest.contains("\"attempt\""), "{manifest}");
    let status = case.ok(&["status", "m.toml", "--store", "out"]);
    assert!(status.contains("all 1 instance(s) up to date"), "{status}");
    let (code, link) = case.go(&["pull", "m.toml", "--to", "lnk", "--link"]);
    assert_eq!(code, Some(2), "{link}");
    assert!(link.contains("--link needs a local store"), "{link}");

    // Forced: a new attempt, committed over the old manifest; the old attempt's files stay.
    let out = case.ok(&["run", "m.toml", "--force", "a"]);
    assert!(out.contains("1 ran"), "{out}");
    let url2 = stdout(&["path", "m.toml", "a", "a.txt"]);
    assert_ne!(url, url2);
    let keys = moto.keys("chaos", "pp/command/");
    assert!(
        keys.contains(&rel),
        "the old attempt stays for readers: {keys:?}"
    );
    let out = case.ok(&["pull", "m.toml", "--to", "out"]);
    assert!(
        out.contains("1 copied"),
        "a forced rebuild's new files: {out}"
    );

    // The object changed behind the store's back, same size: the pull names it, copies nothing.
    let rel2 = url2.strip_prefix("s3://chaos/").unwrap();
    let (status, _) =
        common::moto::http_bytes(moto.port, "PUT", &format!("/chaos/{rel2}"), b"HELLO\n");
    assert_eq!(status, 200);
    let (code, out) = case.go(&["pull", "m.toml", "--to", "fresh"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains(rel2) && out.contains("content digest"),
        "{out}"
    );
    assert!(walk(&case.path().join("fresh"))
        .iter()
        .all(|p| !p.ends_with("_manifest.json")));
}
