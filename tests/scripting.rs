//! The `adaptor` binary as scripts and CI use it: exit codes end to end (0 done, 1 failed work, 2
//! usage or manifest, 3 store or network), `status --exit-code`, the `--json` output of `status`,
//! `show`, `gc`, `verify` and `stages` parsed back, shell completions, `embed`'s own options, and
//! which edits re-run a `command` stage.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::moto::s3_vars;
use common::{text, Case};
use serde_json::Value;

/// Two command stages, `b` reading `a`: quick to build, with a store to inspect.
const CHAIN: &str = "[stages.a]\nkind = 'command'\nparams.run = 'echo one > $OUT/a.txt'\n\
                     [stages.b]\nkind = 'command'\ninputs.deps = 'a'\nparams.run = 'cat $IN_DEPS/a.txt > $OUT/b.txt'\n";

fn json(case: &Case, args: &[&str]) -> Value {
    let out = case.run(args);
    assert!(out.status.success(), "adaptor {args:?}:\n{}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("adaptor {args:?} printed no JSON ({e}):\n{}", text(&out)))
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn each_exit_code_end_to_end() {
    let case = Case::new();
    case.write("ok.toml", CHAIN);
    // 0: done.
    assert_eq!(case.go(&["run", "ok.toml"]).0, Some(0));

    // 1: a stage failed.
    case.write(
        "fail.toml",
        "[stages.bad]\nkind = 'command'\nparams.run = 'echo broken >&2; exit 4'\n",
    );
    let (code, out) = case.go(&["run", "fail.toml"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("exited with status 4: broken"), "{out}");

    // 2: usage (clap) and manifest errors, parse and plan alike.
    assert_eq!(case.go(&["status", "ok.toml", "--no-such-flag"]).0, Some(2));
    case.write("syntax.toml", "[stages.a\nkind = 'command'\n");
    let (code, out) = case.go(&["status", "syntax.toml"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("error: syntax.toml:1:"), "{out}");
    case.write(
        "plan.toml",
        "[stages.b]\nkind = 'command'\ninputs.deps = 'nothing'\nparams.run = 'true'\n",
    );
    let (code, out) = case.go(&["run", "plan.toml"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("plan.toml:3:"), "{out}");
    let (code, out) = case.go(&["explain", "ok.toml", "nope"]);
    assert_eq!(code, Some(2), "{out}");

    // 3: the store unreachable: an S3 endpoint where nothing listens, no retries.
    let mut env = s3_vars(closed_port());
    env.push(("ADAPTOR_S3_RETRIES".into(), "0".into()));
    let s3 = Case::with_env(env);
    s3.write("ok.toml", CHAIN);
    for args in [
        &["status", "ok.toml", "--store", "s3://b/p"][..],
        &["run", "ok.toml", "--store", "s3://b/p"],
    ] {
        let t0 = Instant::now();
        let (code, out) = s3.go(args);
        assert_eq!(code, Some(3), "{args:?}: {out}");
        assert!(out.contains("s3://b/p"), "{args:?}: {out}");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{args:?} took {:?}",
            t0.elapsed()
        );
    }
    // 3: a local store that cannot be a folder (a file is in the way).
    case.write("not-a-folder", "");
    let (code, out) = case.go(&["run", "ok.toml", "--store", "not-a-folder"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("not-a-folder"), "{out}");

    // The table is in --help, with the environment variables the binary honours.
    let help = case.ok(&["--help"]);
    assert!(
        help.contains("Exit codes:") && help.contains("3    store or network error"),
        "{help}"
    );
    insta::assert_snapshot!("help", help);
}

#[test]
fn status_exit_code_and_json_follow_the_store() {
    let case = Case::new();
    case.write("m.toml", CHAIN);
    let args = ["status", "m.toml", "--exit-code"];
    // Nothing built: missing, exit 1 (plain status still exits 0).
    let (code, out) = case.go(&args);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("missing"), "{out}");
    assert_eq!(case.go(&["status", "m.toml"]).0, Some(0));
    case.ok(&["run", "m.toml"]);
    let (code, out) = case.go(&args);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("all 2 instance(s) up to date"), "{out}");

    let rows = json(&case, &["status", "m.toml", "--json"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["instance"], "a");
    assert_eq!(rows[0]["kind"], "command");
    assert_eq!(rows[0]["state"], "up-to-date");
    assert_eq!(rows[0]["key"].as_str().unwrap().len(), 64);

    // One edit upstream: both stale, exit 1; the JSON names the previous key.
    let before = rows[1]["key"].as_str().unwrap().to_string();
    case.write("m.toml", &CHAIN.replace("echo one", "echo two"));
    let (code, out) = case.go(&["status", "m.toml", "--exit-code", "--json"]);
    assert_eq!(code, Some(1), "{out}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[1]["state"], "stale");
    assert_eq!(rows[1]["previous_key"], before.as_str());
}

#[test]
fn show_gc_verify_and_stages_print_json() {
    let case = Case::new();
    case.write("m.toml", CHAIN);
    case.ok(&["run", "m.toml"]);
    let rows = json(&case, &["status", "m.toml", "--json"]);
    let key_a = rows[0]["key"].as_str().unwrap().to_string();

    // show: the _manifest.json fields and where the artifact is.
    let shown = json(&case, &["show", &key_a[..10], "--json"]);
    assert_eq!(shown["key"], key_a.as_str());
    assert_eq!(shown["kind"], "command");
    assert_eq!(shown["instance"], "a");
    assert_eq!(shown["params"]["run"], "echo one > $OUT/a.txt");
    assert_eq!(shown["files"][0]["path"], "a.txt");
    assert_eq!(shown["files"][0]["bytes"], 4);
    let location = shown["location"].as_str().unwrap();
    assert!(Path::new(location).join("a.txt").is_file(), "{location}");
    assert!(shown.get("log").is_none());
    let verbose = json(&case, &["show", location, "--json", "-v"]);
    assert_eq!(verbose["key"], key_a.as_str());
    assert!(verbose["log"].is_string(), "{verbose}");

    // verify: all good, then a byte changed behind the store's back (exit 1, file named).
    let v = json(&case, &["verify", "m.toml", "--json"]);
    assert_eq!(
        (v["checked"].as_u64(), v["bad"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(v["artifacts"][0]["ok"], true);
    std::fs::write(Path::new(location).join("a.txt"), "onf\n").unwrap();
    let out = case.run(&["verify", "m.toml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bad"], 1);
    let bad = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ok"] == false)
        .unwrap();
    assert_eq!(bad["key"], key_a.as_str());
    assert_eq!(bad["bad_files"][0]["path"], "a.txt");
    assert!(
        bad["bad_files"][0]["location"]
            .as_str()
            .unwrap()
            .ends_with("/a.txt"),
        "{bad}"
    );
    assert_eq!(bad["quarantined"], Value::Null);

    // gc: after an edit, the old artifacts are unreferenced; dry run lists, gc deletes the same.
    case.write("m.toml", &CHAIN.replace("echo one", "echo two"));
    case.ok(&["run", "m.toml"]);
    let dry = json(&case, &["gc", "m.toml", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["kept"], 2);
    let paths: Vec<&str> = dry["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 2, "{dry}");
    assert!(
        paths.iter().any(|p| p.contains(&key_a)),
        "{paths:?} misses {key_a}"
    );
    assert!(Path::new(location).exists(), "a dry run deletes nothing");
    let sum: u64 = dry["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(dry["deleted_bytes"].as_u64(), Some(sum));
    let gc = json(&case, &["gc", "m.toml", "--json"]);
    assert_eq!(gc["dry_run"], false);
    assert_eq!(gc["deleted"], dry["deleted"]);
    assert!(!Path::new(location).exists());

    // stages: every kind with typed defaults.
    let st = json(&case, &["stages", "--json"]);
    let command = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "command")
        .unwrap();
    assert_eq!(command["params"][0]["name"], "run");
    assert_eq!(command["params"][0]["required"], true);
    assert_eq!(command["params"][0]["default"], Value::Null);
    assert_eq!(command["inputs"][0]["name"], "deps");
    let encode = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "encode-image")
        .unwrap();
    let batch = encode["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "batch_size")
        .unwrap();
    assert_eq!(batch["default"], 64);
    assert_eq!(encode["sharding"]["param"], "shard");
    assert!(st["runner_params"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "timeout"));
}

#[test]
fn completions_name_the_subcommands_and_parse() {
    let case = Case::new();
    let bash = case.ok(&["completions", "bash"]);
    for sub in [
        "run", "status", "explain", "gc", "verify", "show", "stages", "embed",
    ] {
        assert!(bash.contains(sub), "bash completions miss `{sub}`");
    }
    assert!(bash.contains("--exit-code") && bash.contains("--json"));
    let script = case.write("adaptor.bash", &bash);
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "bash -n: {}", text(&check));
    for shell in ["zsh", "fish"] {
        assert!(case.ok(&["completions", shell]).contains("adaptor"));
    }
    assert_eq!(case.go(&["completions", "tcsh"]).0, Some(2));
}

/// `adaptor embed KIND --help`, as wide as a 100-column terminal.
fn embed_help(kind: &str) -> String {
    let out = Case::new()
        .cmd(&["embed", kind, "--help"])
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The long options a help text names (`--batch-size`), sorted.
fn long_options(help: &str) -> Vec<String> {
    // An option's line starts with it (`-v, --verbose`, `--backbone <DIR>`); wrapped lines with text.
    let mut opts: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split([' ', ',']).find(|w| w.starts_with("--")))
        .map(str::to_string)
        .collect();
    opts.sort();
    opts.dedup();
    opts
}

#[test]
fn embed_help_shows_every_option_of_the_worker() {
    let (image, text_help) = (embed_help("image"), embed_help("text"));
    insta::assert_snapshot!("embed_image_help", image);
    insta::assert_snapshot!("embed_text_help", text_help);
    // The same options as the worker's own `embed` (ours adds the global ones).
    let worker = common::bin().with_file_name("adaptor-torch");
    for (kind, ours) in [("image", &image), ("text", &text_help)] {
        let out = std::process::Command::new(&worker)
            .args(["embed", kind, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let mut expected = long_options(&String::from_utf8_lossy(&out.stdout));
        expected.extend(["--cache-dir", "--quiet", "--verbose"].map(String::from));
        expected.sort();
        assert_eq!(long_options(ours), expected, "embed {kind}");
    }
}

#[test]
fn embed_refuses_bad_options_itself_and_passes_the_workers_failure_on() {
    let case = Case::new();
    // Refused by clap here (exit 2), before the worker starts: ADAPTOR_TORCH points nowhere.
    let (code, out) = case
        .cmd(&[
            "embed",
            "image",
            "--backbone",
            "b",
            "--input",
            "x.png",
            "--output",
            "o.parquet",
            "--batch-size",
            "0",
        ])
        .env("ADAPTOR_TORCH", "/nonexistent/adaptor-torch")
        .output()
        .map(|o| (o.status.code(), text(&o)))
        .unwrap();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("0 is not in 1..=65536"), "{out}");
    // The real worker on a backbone folder that does not exist: its error, exit 1.
    let (code, out) = case.go(&[
        "embed",
        "text",
        "--backbone",
        "no-such-folder",
        "--input",
        "t.txt",
        "--output",
        "o.parquet",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error: "), "{out}");
}

#[test]
fn embed_text_runs_the_worker_with_the_validated_options() {
    let case = Case::new();
    case.write("t.txt", "no acute findings\nsmall left effusion\n");
    let minilm = common::minilm();
    let out = case.ok(&[
        "embed",
        "text",
        "--backbone",
        minilm.to_str().unwrap(),
        "--input",
        "t.txt",
        "--output",
        "o.parquet",
        "--pooling",
        "mean",
        "--max-length",
        "16",
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "--threads",
        "1",
    ]);
    assert!(out.contains("wrote 2 rows to o.parquet"), "{out}");
    assert!(case.path().join("o.parquet").is_file());
}

/// A `command` stage's script is part of its key only when declared as an input: declared, an
/// edit re-runs the stage; only named in `run`, an edit goes unseen.
#[test]
fn a_script_declared_as_an_input_re_runs_its_stage_when_edited() {
    let case = Case::new();
    case.write("code/step.sh", "echo v1 > \"$OUT/out.txt\"\n");
    case.write(
        "m.toml",
        "[datasets.code]\nkind = 'scripts'\nroot = 'code'\n\
         [stages.declared]\nkind = 'command'\ninputs.deps = 'datasets.code'\nparams.run = 'sh $IN_DEPS/step.sh'\n\
         [stages.undeclared]\nkind = 'command'\nparams.run = 'sh \"$VAR_CODE/step.sh\"'\n\
         params.vars = { code = 'CODE' }\n",
    );
    let code = case.path().join("code");
    let text = std::fs::read_to_string(case.path().join("m.toml"))
        .unwrap()
        .replace("'CODE'", &format!("'{}'", code.display()));
    case.write("m.toml", &text);
    case.ok(&["run", "m.toml"]);
    // What the current artifact of each instance holds.
    let out_of = |instance: &str| {
        let rows = json(&case, &["status", "m.toml", "--json"]);
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance"] == instance)
            .unwrap()
            .clone();
        let dir = case
            .path()
            .join("artifacts/command")
            .join(row["key"].as_str().unwrap());
        std::fs::read_to_string(dir.join("out.txt")).unwrap()
    };
    assert_eq!(out_of("declared"), "v1\n");
    assert_eq!(out_of("undeclared"), "v1\n");

    case.write("code/step.sh", "echo v2 > \"$OUT/out.txt\"\n");
    let (code, status) = case.go(&["status", "m.toml", "--exit-code"]);
    assert_eq!(code, Some(1), "{status}");
    assert!(
        status.contains("stale") && status.contains("declared"),
        "{status}"
    );
    let out = case.ok(&["run", "m.toml"]);
    assert!(out.contains("1 ran"), "{out}");
    assert_eq!(out_of("declared"), "v2\n");
    assert_eq!(
        out_of("undeclared"),
        "v1\n",
        "an undeclared script is not in the key"
    );
}

#[test]
fn an_immutable_input_is_not_rechecked_until_run_verify() {
    let case = Case::new();
    case.write("code/step.sh", "echo v1 > \"$OUT/out.txt\"\n");
    case.write(
        "m.toml",
        "[datasets.code]\nkind = 'scripts'\nroot = 'code'\nimmutable = true\n\
         [stages.s]\nkind = 'command'\ninputs.deps = 'datasets.code'\nparams.run = 'sh $IN_DEPS/step.sh'\n",
    );
    case.ok(&["run", "m.toml"]);
    let key = || json(&case, &["status", "m.toml", "--json"])[0]["key"].clone();
    let built = key();
    // The risk `immutable` documents: an edit inside is not seen, nothing is stale.
    case.write("code/step.sh", "echo v2 > \"$OUT/out.txt\"\n");
    case.write("code/new.sh", "true\n");
    let (code, out) = case.go(&["status", "m.toml", "--exit-code"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(key(), built);
    // --verify rehashes, names the changed file the check did not look at, and rebuilds.
    let (code, out) = case.go(&["run", "m.toml", "--verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("datasets.code: 1 file(s) changed content") && out.contains("step.sh"),
        "{out}"
    );
    assert!(out.contains("1 ran"), "{out}");
    assert_ne!(key(), built);
    // The verified content is what later runs use: up to date, and `immutable = false` (every
    // file stat'ed) agrees on the key.
    let verified = key();
    assert_eq!(case.go(&["status", "m.toml", "--exit-code"]).0, Some(0));
    let text = std::fs::read_to_string(case.path().join("m.toml")).unwrap();
    case.write(
        "m.toml",
        &text.replace("immutable = true", "check = 'folders'"),
    );
    assert_eq!(key(), verified);
    // `check = 'folders'` sees a file added.
    case.write("code/other.sh", "true\n");
    assert_ne!(key(), verified);
}

#[test]
fn the_peak_memory_of_a_stage_s_processes_is_recorded_and_shown() {
    let case = Case::new();
    // dd holds one 96 MiB block in memory; `true` next to nothing.
    case.write(
        "m.toml",
        "[stages.big]\nkind = 'command'\nparams.run = 'dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null'\n\
         [stages.small]\nkind = 'command'\nparams.run = 'true'\n",
    );
    case.ok(&["run", "m.toml"]);
    let rows = json(&case, &["status", "m.toml", "--json"]);
    let peak = |name: &str| {
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance"] == name)
            .unwrap();
        let shown = json(&case, &["show", row["key"].as_str().unwrap(), "--json"]);
        shown["peak_rss_mib"]
            .as_u64()
            .unwrap_or_else(|| panic!("{shown}"))
    };
    let (big, small) = (peak("big"), peak("small"));
    assert!(big >= 96, "{big} MiB");
    assert!(small < 32, "{small} MiB");
    let key = rows[0]["key"].as_str().unwrap().to_string();
    let out = case.ok(&["show", &key]);
    assert!(out.contains(&format!("memory    peak {big} MiB")), "{out}");
}
