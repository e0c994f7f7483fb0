//! End-to-end tests of `adaptor path`, `pull`, `run --force`, `forget` and `dag`: the real binary
//! on a real local store, with tiny `command` stages (the S3 side of `path`, `pull` and `--force`
//! is in tests/store_s3.rs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod common;

use common::{walk, Case};

/// The dataset every manifest here reads (`notes/n.txt`, written by [`with_notes`]).
const NOTES: &str = "[datasets.notes]\nkind = \"notes\"\nroot = \"notes\"\n";

/// A case with `notes/n.txt` and `m.toml`: [`NOTES`] and `stages`.
fn with_notes(stages: &str) -> Case {
    let case = Case::new();
    case.write("notes/n.txt", "hello\n");
    case.write("m.toml", &format!("{NOTES}{stages}"));
    case
}

/// `a` reads a dataset file; `b` copies it and appends the time in nanoseconds, so that every
/// build of `b` differs.
const TWO_STAGES: &str = r#"
[stages.a]
kind = "command"
inputs.deps = "datasets.notes"
params.run = "cat $IN_DEPS/n.txt > $OUT/a.txt; mkdir $OUT/d; echo x > $OUT/d/b.txt"

[stages.b]
kind = "command"
inputs.deps = "a"
params.run = "cat $IN_DEPS/a.txt > $OUT/b.txt; date +%s%N >> $OUT/b.txt"
"#;

fn two_stages() -> Case {
    with_notes(TWO_STAGES)
}

/// Stdout alone of a command that must succeed, trimmed.
fn stdout(case: &Case, args: &[&str]) -> String {
    let out = case.run(args);
    assert!(
        out.status.success(),
        "adaptor {args:?}: {}",
        common::text(&out)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// Each instance's key (from `status --json`).
fn keys(case: &Case, manifest: &str) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&stdout(case, &["status", manifest, "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["instance"].as_str().unwrap().to_string(),
                r["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `text` with the case folder written `[case]` and each key (whole or short) `<key of NAME>`.
fn redact(case: &Case, text: &str, keys: &[(String, String)]) -> String {
    let mut text = text.replace(&case.path().display().to_string(), "[case]");
    for (name, key) in keys {
        text = text
            .replace(key.as_str(), &format!("<key of {name}>"))
            .replace(&key[..12], &format!("<key of {name}>"));
    }
    text
}

#[test]
fn path_names_the_current_artifact_or_says_why_there_is_none() {
    let case = two_stages();
    let (code, missing) = case.go(&["path", "m.toml", "b"]);
    assert_eq!(code, Some(1), "{missing}");
    case.ok(&["run", "m.toml"]);
    let keys_before = keys(&case, "m.toml");

    let b_txt = stdout(&case, &["path", "m.toml", "b", "b.txt"]);
    assert!(std::fs::read_to_string(&b_txt)
        .unwrap()
        .starts_with("hello\n"));
    let a_dir = PathBuf::from(stdout(&case, &["path", "m.toml", "a"]));
    assert_eq!(
        a_dir,
        common::artifact_of(&case.path().join("artifacts"), "command", "a")
    );
    assert!(a_dir.join("a.txt").is_file() && a_dir.join("d/b.txt").is_file());

    let v: serde_json::Value = serde_json::from_str(&stdout(
        &case,
        &["path", "m.toml", "a", "d/b.txt", "--json"],
    ))
    .unwrap();
    assert_eq!(v["state"], "up-to-date");
    assert_eq!(v["instance"], "a");
    assert_eq!(v["key"], keys_before[0].1.as_str());
    assert_eq!(
        std::fs::read_to_string(v["path"].as_str().unwrap()).unwrap(),
        "x\n"
    );

    // Bad requests are usage errors.
    let (code, bad_file) = case.go(&["path", "m.toml", "a", "nope.txt"]);
    assert_eq!(code, Some(2), "{bad_file}");
    assert!(
        bad_file.contains("a has no file `nope.txt`; its files: a.txt, d/b.txt"),
        "{bad_file}"
    );
    let (code, many) = case.go(&["path", "m.toml", "*"]);
    assert_eq!(code, Some(2), "{many}");
    assert!(many.contains("`*` matches 2 instances"), "{many}");
    let (code, escape) = case.go(&["path", "m.toml", "a", "../x"]);
    assert_eq!(code, Some(2), "{escape}");

    // Change b: the artifact in the store is not the current one any more.
    let text = TWO_STAGES.replace("date +%s%N", "date +%s");
    case.write("m.toml", &format!("{NOTES}{text}"));
    let (code, stale) = case.go(&["path", "m.toml", "b"]);
    assert_eq!(code, Some(1), "{stale}");
    let out = case.run(&["path", "m.toml", "b", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "stale");
    assert!(v["path"].is_null());

    let mut all_keys = keys_before;
    all_keys.extend(keys(&case, "m.toml"));
    all_keys[3].0 = "b after the change".into();
    insta::assert_snapshot!(redact(&case, &format!("{missing}{stale}"), &all_keys));
}

#[test]
fn run_force_replaces_the_artifact_in_one_step_and_forget_makes_it_missing() {
    let case = two_stages();
    case.ok(&["run", "m.toml"]);
    let keys = keys(&case, "m.toml");
    let b_txt = PathBuf::from(stdout(&case, &["path", "m.toml", "b", "b.txt"]));
    let first = std::fs::read_to_string(&b_txt).unwrap();

    // A reader that reads b.txt all along: it must always find the whole file.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, b_txt) = (stop.clone(), b_txt.clone());
        std::thread::spawn(move || {
            let mut reads = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&b_txt).expect("b.txt is always there");
                assert!(
                    text.starts_with("hello\n") && text.lines().count() == 2,
                    "a half-written b.txt: {text:?}"
                );
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..3 {
        let out = case.ok(&["run", "m.toml", "--force", "b"]);
        assert!(out.contains("1 ran, 1 up to date"), "{out}");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    // Same key, same place, new content; the old artifacts are set aside for gc.
    assert_eq!(
        stdout(&case, &["path", "m.toml", "b", "b.txt"]),
        b_txt.display().to_string()
    );
    assert_ne!(std::fs::read_to_string(&b_txt).unwrap(), first);
    let replaced = std::fs::read_dir(case.path().join("artifacts/_replaced/command"))
        .unwrap()
        .count();
    assert_eq!(replaced, 3);
    let gc = case.ok(&["gc", "m.toml", "--dry-run"]);
    assert!(!gc.contains("_replaced"), "kept for a lease timeout: {gc}");
    assert!(case
        .ok(&["status", "m.toml"])
        .contains("all 2 instance(s) up to date"));
    // The run index points at the new build.
    let dry = case.ok(&["run", "m.toml", "--force", "b", "--dry-run"]);
    let (code, unknown) = case.go(&["run", "m.toml", "--force", "zzz"]);
    assert_eq!(code, Some(2), "{unknown}");
    assert!(
        unknown.contains("no stage instance matches `zzz`"),
        "{unknown}"
    );

    // Forget a: missing for this manifest, its artifact still there; the next run rebuilds it.
    let a_dir = common::artifact_of(&case.path().join("artifacts"), "command", "a");
    let forgot = case.ok(&["forget", "m.toml", "a"]);
    let status = case.ok(&["status", "m.toml"]);
    assert!(a_dir.join("a.txt").is_file());
    let (code, path) = case.go(&["path", "m.toml", "a"]);
    assert_eq!(code, Some(1), "{path}");
    let out = case.ok(&["run", "m.toml"]);
    assert!(out.contains("1 ran, 1 up to date"), "{out}");
    assert!(case
        .ok(&["status", "m.toml"])
        .contains("all 2 instance(s) up to date"));
    assert!(walk(&case.path().join("artifacts/_forgotten")).is_empty());
    let (code, none) = case.go(&["forget", "m.toml"]);
    assert_eq!(code, Some(2), "{none}");

    insta::assert_snapshot!(redact(
        &case,
        &format!("{dry}---\n{forgot}---\n{status}---\n{path}"),
        &keys
    ));
}

/// Four instances in four states: `a` up to date, `b` stale, `c` failed, `d` missing (after c).
const FOUR_STATES: &str = r#"
[stages.a]
kind = "command"
inputs.deps = "datasets.notes"
params.run = "cat $IN_DEPS/n.txt > $OUT/a.txt"

[stages.b]
kind = "command"
inputs.deps = "a"
params.run = "cat $IN_DEPS/a.txt > $OUT/b.txt"

[stages.c]
kind = "command"
inputs.deps = "a"
params.run = "exit 3"

[stages.d]
kind = "command"
inputs.deps = ["b", "c", "datasets.notes"]
params.run = "touch $OUT/d.txt"
"#;

#[test]
fn dag_draws_each_instance_with_its_state_in_dot_and_mermaid() {
    let case = with_notes(FOUR_STATES);
    let (code, out) = case.go(&["run", "m.toml"]);
    assert_eq!(code, Some(1), "c fails: {out}");
    let changed = FOUR_STATES.replace("> $OUT/b.txt", "> $OUT/b2.txt");
    case.write("m.toml", &format!("{NOTES}{changed}"));
    let dot = stdout(&case, &["dag", "m.toml"]) + "\n";
    let mermaid = stdout(&case, &["dag", "m.toml", "--format", "mermaid"]) + "\n";
    let only_c = stdout(&case, &["dag", "m.toml", "--only", "c"]) + "\n";
    check_dot(&dot, 5, 6);
    check_dot(&only_c, 3, 2);
    for state in ["up-to-date", "stale", "failed", "missing"] {
        assert!(
            dot.contains(&format!("class=\"{state}\"")),
            "{state}: {dot}"
        );
    }
    // Mermaid: a fenced flowchart; every node has a class, and every class used is defined.
    assert!(mermaid.starts_with("```mermaid\nflowchart LR\n") && mermaid.ends_with("```\n"));
    for line in mermaid.lines().filter(|l| l.contains(":::")) {
        let class = line.rsplit(":::").next().unwrap();
        assert!(
            mermaid.contains(&format!("classDef {class} ")),
            "{class}: {mermaid}"
        );
    }
    assert_eq!(mermaid.matches(" --> ").count(), 6);
    let (code, bad) = case.go(&["dag", "m.toml", "--format", "png"]);
    assert_eq!(code, Some(2), "{bad}");
    insta::assert_snapshot!(format!("{dot}---\n{mermaid}---\n{only_c}"));
}

/// Checks the structure of a dot graph: `nodes` declared nodes, `edges` edges between declared
/// nodes; and renders it with Graphviz when `dot` is installed.
fn check_dot(dot: &str, nodes: usize, edges: usize) {
    assert!(
        dot.starts_with("digraph adaptor {\n") && dot.ends_with("}\n"),
        "{dot}"
    );
    let declared: Vec<&str> = dot
        .lines()
        .filter(|l| l.contains(" [label=\""))
        .map(|l| l.trim().split(' ').next().unwrap())
        .collect();
    assert_eq!(declared.len(), nodes, "{dot}");
    let edge_lines: Vec<&str> = dot.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(edge_lines.len(), edges, "{dot}");
    for e in edge_lines {
        let (from, to) = e.trim().trim_end_matches(';').split_once(" -> ").unwrap();
        assert!(declared.contains(&from) && declared.contains(&to), "{e}");
    }
    let Ok(mut child) = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        return; // Graphviz is not installed: the structure above is what is checked.
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dot refused the graph:\n{dot}");
    let svg = String::from_utf8_lossy(&out.stdout);
    for n in declared {
        assert!(
            svg.contains(&format!("<title>{n}</title>")),
            "{n} not drawn"
        );
    }
}

/// The files of the artifact folders under `root` (relative paths and contents), sorted.
fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    walk(root)
        .into_iter()
        .filter(|p| !p.starts_with(root.join("_staging")))
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn pull_copies_verified_artifacts_links_them_and_refuses_a_corrupt_one() {
    let case = two_stages();
    case.ok(&["run", "m.toml"]);
    let keys = keys(&case, "m.toml");
    let store = case.path().join("artifacts");
    let pulled = stdout(&case, &["pull", "m.toml", "--to", "out"]);
    // The copy holds each artifact's files, log and manifest, as the store does.
    let out_dir = case.path().join("out");
    let copied = files_under(&out_dir);
    let originals: Vec<_> = files_under(&store)
        .into_iter()
        .filter(|(p, _)| p.starts_with("command/"))
        .collect();
    assert_eq!(copied, originals);
    // ... so it serves as a store.
    let status = case.ok(&["status", "m.toml", "--store", "out"]);
    assert!(status.contains("all 2 instance(s) up to date"), "{status}");
    let again: serde_json::Value =
        serde_json::from_str(&stdout(&case, &["pull", "m.toml", "--to", "out", "--json"])).unwrap();
    assert_eq!(again["present"], 2);
    assert_eq!(again["copied"], 0);
    assert_eq!(again["artifacts"].as_array().unwrap().len(), 2);

    // --only, and --link: the same inodes.
    stdout(
        &case,
        &["pull", "m.toml", "--only", "a", "--to", "lnk", "--link"],
    );
    let a_key = &keys[0].1;
    let linked = case.path().join(format!("lnk/command/{a_key}/a.txt"));
    let original = store.join(format!("command/{a_key}/a.txt"));
    assert_eq!(
        std::fs::metadata(&linked).unwrap().ino(),
        std::fs::metadata(&original).unwrap().ino()
    );
    assert_eq!(
        std::fs::read_dir(case.path().join("lnk/command"))
            .unwrap()
            .count(),
        1
    );

    // A file changed behind the store's back (same size): an error naming it, nothing complete.
    std::fs::write(&original, "HELLO\n").unwrap();
    let (code, corrupt) = case.go(&["pull", "m.toml", "--to", "fresh"]);
    assert_ne!(code, Some(0), "{corrupt}");
    assert!(
        corrupt.contains(&format!("command/{a_key}/a.txt")) && corrupt.contains("content digest"),
        "{corrupt}"
    );
    let left: Vec<PathBuf> = walk(&case.path().join("fresh"));
    assert!(
        left.iter().all(|p| !p.ends_with("_manifest.json")),
        "nothing partial may look complete: {left:?}"
    );
    std::fs::write(&original, "hello\n").unwrap();

    // An instance without a current artifact is not pulled, and the pull says so (exit 1).
    let text = TWO_STAGES.replace("date +%s%N", "date +%s");
    case.write("m.toml", &format!("{NOTES}{text}"));
    let (code, stale) = case.go(&["pull", "m.toml", "--to", "out"]);
    assert_eq!(code, Some(1), "{stale}");
    let mut keys = keys;
    keys.extend(self::keys(&case, "m.toml"));
    insta::assert_snapshot!(redact(&case, &format!("{pulled}\n---\n{stale}"), &keys));
}
