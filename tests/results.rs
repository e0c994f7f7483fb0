//! `adaptor results`, `diff` and `explain` of a copied manifest, end to end on one real store
//! built once for this test binary: synthetic MIMIC-CXR and RSNA miniatures, the real MiniLM and
//! the random-initialised DINOv2 fixture, a one-epoch adaptor, classification heads through the
//! pre-trained adaptor, a random-initialised one and none, and the report.
//!
//! Metrics depend on the CPU's float kernels, so the snapshots show the layout with numbers
//! masked; the numbers themselves are checked against the report's `results.md` and the
//! `result.json` files of the same store.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;
use common::{adaptor, minilm, repo, text};

/// The experiment. The backbones are named `bert` and `dinov2-s` (they are MiniLM and a random
/// tiny DINOv2) and run in the published setting (pooler text vectors, CLS image vectors of images
/// resized straight to the crop, mean/std 0.5, MLP heads) so that the original's published numbers
/// sit beside the cells, as they do for a real run with those backbones.
fn manifest() -> String {
    format!(
        r#"
[backbones.bert]
kind = "bert"
weights = "{minilm}"

[backbones.dinov2-s]
kind = "dinov2"
weights = "{repo}/data/encoders/dinov2"

[matrix]
fraction = [0.1, 1.0]
seed = [0, 1]

[stages.synth]
kind = "synth"
foreach = {{ dataset = ["mimic-cxr", "rsna"] }}
params = {{ dataset = "${{dataset}}", n = 48, seed = 7, image_size = 64 }}

[stages.ingest]
kind = "ingest"
foreach = {{ dataset = ["mimic-cxr", "rsna"] }}
inputs.raw = "synth[dataset=${{dataset}}]"
params = {{ verify = "exists" }}

[stages.text]
kind = "encode-text"
params = {{ pooling = "pooler", device = "cpu", max_length = 32 }}
inputs = {{ records = "ingest[dataset=mimic-cxr]", backbone = "backbones.bert" }}

[stages.image]
kind = "encode-image"
foreach = {{ images = ["mimic-cxr", "rsna"] }}
params = {{ pooling = "cls", normalize = "half", device = "cpu", resize = 56, image_size = 56 }}
inputs = {{ records = "ingest[dataset=${{images}}]", raw = "synth[dataset=${{images}}]", backbone = "backbones.dinov2-s" }}

[stages.pretrain]
kind = "train-adaptor"
params = {{ epochs = 1, batch_size = 16, device = "cpu" }}
inputs = {{ image = "image[images=mimic-cxr]", text = "text" }}

[defaults.classify]
epochs = 2
batch_size = 16
lr = 1e-3
device = "cpu"

[stages.classify]
kind = "classify"
foreach = ["fraction", "seed"]
params = {{ fraction = "${{fraction}}", seed = "${{seed}}" }}
inputs = {{ features = "image[images=rsna]", records = "ingest[dataset=rsna]", adaptor = "pretrain" }}

[stages.classify-random]
kind = "classify"
foreach = {{ seed = [0] }}
params = {{ seed = "${{seed}}", adaptor_init = "random" }}
inputs = {{ features = "image[images=rsna]", records = "ingest[dataset=rsna]", adaptor = "pretrain" }}

[stages.classify-none]
kind = "classify"
foreach = {{ seed = [0] }}
params = {{ seed = "${{seed}}" }}
inputs = {{ features = "image[images=rsna]", records = "ingest[dataset=rsna]" }}

[stages.report]
kind = "report"
inputs.results = ["classify[*]", "classify-random[*]", "classify-none[*]"]
"#,
        minilm = minilm().display(),
        repo = repo().display()
    )
}

/// `m.toml` with the no-adaptor head's learning rate changed: the researcher's copy.
fn copy_with_lr(m: &str) -> String {
    let from = "params = { seed = \"${seed}\" }\ninputs = { features = \"image[images=rsna]\", records = \"ingest[dataset=rsna]\" }";
    assert!(
        m.contains(from),
        "the manifest no longer has the no-adaptor stage"
    );
    m.replace(from, &from.replace("{ seed", "{ lr = 2e-3, seed"))
}

/// A folder holding `m.toml` built, and `b.toml` (its copy with one learning rate changed)
/// built too, in the same store `artifacts/`. Built once per test binary; the tests only read it.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("results-e2e");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("empty-store")).unwrap();
        let m = manifest();
        std::fs::write(dir.join("m.toml"), &m).unwrap();
        std::fs::write(dir.join("b.toml"), copy_with_lr(&m)).unwrap();
        for manifest in ["m.toml", "b.toml"] {
            let out = adaptor(&dir, &["run", manifest, "-j", "2"])
                .output()
                .unwrap();
            assert!(out.status.success(), "run {manifest}:\n{}", text(&out));
        }
        dir
    })
}

/// `adaptor ARGS` in the built folder: exit code, stdout, stderr.
fn go(args: &[&str]) -> (i32, String, String) {
    let out = adaptor(built(), args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = go(args);
    assert_eq!(code, 0, "adaptor {args:?}:\n{out}{err}");
    out
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("adaptor {args:?}: {e}\n{out}"))
}

/// What varies between machines and runs, masked: the store's path, keys, times and dates, and
/// metrics (numbers with one decimal, as percentages are written, or four, as the loss is;
/// not parameter values, fractions after `=`, or published numbers after `pub. `); runs of
/// spaces become one (column widths follow the numbers).
fn masked(s: &str) -> String {
    let s = s.replace(&built().display().to_string(), "[dir]");
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let run = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if run >= 12 && chars[i..i + run].iter().any(char::is_ascii_digit) {
            out.push_str("[key]");
            i += run;
        } else if c.is_ascii_digit() {
            let mut n = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':' | '-'))
                .count();
            while !chars[i + n - 1].is_ascii_digit() {
                n -= 1;
            }
            let word: String = chars[i..i + n].iter().collect();
            let decimals = word.split_once('.').map(|(_, d)| d.len());
            let kept = out.ends_with('=') || out.ends_with("pub. ");
            let metric = matches!(decimals, Some(1 | 4)) && !kept;
            let time = word.contains(':') || word.contains('-');
            if metric && (out.ends_with('+') || out.ends_with('-')) {
                out.pop(); // the sign of a difference follows the numbers
            }
            out.push_str(if metric || time { "#" } else { &word });
            i += n;
        } else if c == ' ' {
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            out.push(' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The report's `results.md` of `m.toml` (its key from `status --json`).
fn results_md() -> String {
    let status = json(&["status", "m.toml", "--json"]);
    let report = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == "report")
        .expect("a report instance");
    let path = built()
        .join("artifacts/report")
        .join(report["key"].as_str().unwrap())
        .join("results.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn results_are_the_reports_numbers() {
    let doc = json(&["results", "m.toml", "--json"]);
    assert_eq!(doc["evaluations"], 6);
    assert_eq!(doc["missing"].as_array().unwrap().len(), 0);
    let tables = doc["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{doc}");
    let t = &tables[0];
    assert_eq!(
        t["title"],
        "RSNA Pneumonia classification, AUROC (mlp head)"
    );
    let cells = t["cells"].as_array().unwrap();
    // bert × {10 %, 100 %} (2 seeds each), random-init and no adaptor at 100 % (1 seed).
    assert_eq!(cells.len(), 4, "{t}");

    // Every cell is results.md's cell: the same mean ± std (n) and published number.
    let md = results_md();
    let table: Vec<Vec<String>> = md
        .lines()
        .skip_while(|l| !l.starts_with("## RSNA Pneumonia classification"))
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .take_while(|l| !l.starts_with("| instance"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let header = &table[0];
    let mut checked = 0;
    for c in cells {
        let col = format!(
            "{} {}",
            c["vision"].as_str().unwrap(),
            if c["fraction"] == 1.0 {
                "100 %"
            } else {
                "10 %"
            }
        );
        let j = header.iter().position(|h| *h == col).expect("a column");
        let row = table
            .iter()
            .find(|r| r[0] == c["row"].as_str().unwrap())
            .expect("a row");
        let mut want = format!(
            "{:.1} ± {:.1} (n={})",
            c["mean"].as_f64().unwrap() * 100.0,
            c["std"].as_f64().unwrap() * 100.0,
            c["n"]
        );
        if let Some(p) = c["published"].as_f64() {
            want.push_str(&format!(" *pub. {:.1}*", p * 100.0));
        }
        assert_eq!(row[j], want, "cell {c}");
        checked += 1;
    }
    assert_eq!(checked, 4);

    // The cells hold the result.json values of their instances, and the published numbers are
    // the original's (BERT, DINOv2-S, RSNA AUROC: 81.3 at 1 %, 84.8 at 10 %, 86.1 at 100 %).
    let bert100 = cells
        .iter()
        .find(|c| c["row"] == "bert" && c["fraction"] == 1.0)
        .unwrap();
    assert_eq!(bert100["n"], 2);
    assert_eq!(bert100["published"], 0.861);
    let mut seeds: Vec<f64> = ["0", "1"]
        .iter()
        .map(|s| {
            let name = format!("classify[fraction=1.0,seed={s}]");
            let dir = common::artifact_of(&built().join("artifacts"), "classify", &name);
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap())
                    .unwrap();
            r["test"]["auroc"].as_f64().unwrap()
        })
        .collect();
    let mut got: Vec<f64> = bert100["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    seeds.sort_by(f64::total_cmp);
    got.sort_by(f64::total_cmp);
    assert_eq!(got, seeds);

    insta::assert_snapshot!("results_table", masked(&ok(&["results", "m.toml"])));

    // CSV: one line per cell, the same values.
    let csv = ok(&["results", "m.toml", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "dataset,task,metric,head,split,vision,row,fraction,n,mean,std,published"
    );
    assert_eq!(lines.len(), 5, "{csv}");
    let bert_line = lines
        .iter()
        .find(|l| l.contains(",bert,1,"))
        .expect("bert at 100 %");
    assert!(
        bert_line.ends_with(&format!(
            ",2,{},{},0.861",
            bert100["mean"].as_f64().unwrap(),
            bert100["std"].as_f64().unwrap()
        )),
        "{bert_line}"
    );
}

/// The same command on an S3 store (a real S3-compatible server): the evaluations' records copied
/// there as they are (a local artifact's `_manifest.json` names no attempt folder, so its files
/// sit where an S3 reader looks for them), and the same tables come back.
#[test]
fn results_from_an_s3_store_are_the_same() {
    let local = json(&["results", "m.toml", "--json"]);
    let moto = common::moto::start("lab");
    let classify = built().join("artifacts/classify");
    for entry in std::fs::read_dir(&classify).unwrap().flatten() {
        let key = entry.file_name().into_string().unwrap();
        for file in ["_manifest.json", "result.json"] {
            let body = std::fs::read(entry.path().join(file)).unwrap();
            let path = format!("/lab/runs/classify/{key}/{file}");
            let (status, _) = common::moto::http_bytes(moto.port, "PUT", &path, &body);
            assert_eq!(status, 200, "PUT {path}");
        }
    }
    let out = adaptor(
        built(),
        &["results", "m.toml", "--store", "s3://lab/runs", "--json"],
    )
    .envs(moto.env())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut remote: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(remote["store"], "s3://lab/runs");
    remote["store"] = local["store"].clone();
    assert_eq!(remote, local);
}

#[test]
fn results_on_another_split_metric_and_task() {
    let doc = json(&[
        "results", "m.toml", "--split", "valid", "--metric", "macro_f1", "--task", "rsna", "--json",
    ]);
    let t = &doc["tables"][0];
    assert_eq!(t["split"], "valid");
    assert_eq!(t["metric"], "macro_f1");
    // No published number on the valid split, nor for a metric the original did not publish.
    for c in t["cells"].as_array().unwrap() {
        assert!(c["published"].is_null(), "{c}");
    }
    let dir = common::artifact_of(
        &built().join("artifacts"),
        "classify",
        "classify-none[seed=0]",
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    let none = t["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["row"] == "no adaptor (backbone → head)")
        .unwrap();
    assert_eq!(none["values"][0], r["valid"]["macro_f1"]);

    let (code, _, err) = go(&["results", "m.toml", "--task", "covidx"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!("results_no_such_task", err);
}

#[test]
fn results_before_anything_is_built_names_what_is_missing() {
    let (code, out, err) = go(&["results", "m.toml", "--store", "empty-store"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    insta::assert_snapshot!("results_nothing_built", masked(&err));
}

#[test]
fn diff_names_the_changed_parameter_and_the_metrics() {
    insta::assert_snapshot!("diff", masked(&ok(&["diff", "m.toml", "b.toml"])));
    let doc = json(&["diff", "m.toml", "b.toml", "--json"]);
    let changed = doc["changed"].as_array().unwrap();
    let names: Vec<&str> = changed
        .iter()
        .map(|c| c["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["classify-none[seed=0]", "report"]);
    let none = &changed[0];
    assert_eq!(
        none["params"],
        serde_json::json!([{"name": "lr", "from": "0.001", "to": "0.002"}])
    );
    // Both sides are built: the metrics are each side's result.json.
    let store = built().join("artifacts");
    let a = &none["metrics"]["a"];
    let b = &none["metrics"]["b"];
    for (side, key) in [(a, &none["key_a"]), (b, &none["key_b"])] {
        let path = store
            .join("classify")
            .join(key.as_str().unwrap())
            .join("result.json");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(*side, r["test"]);
    }
    assert_eq!(changed[1]["params"], serde_json::json!([]));
    assert_eq!(changed[1]["inputs"][0]["slot"], "results");
    assert_eq!(
        changed[1]["inputs"][0]["reference"],
        "classify-none[seed=0]"
    );
    assert_eq!(doc["same"].as_array().unwrap().len(), 13);

    // The same manifest in two stores: every built instance compared with itself elsewhere.
    let (code, _, err) = go(&["diff", "m.toml", "m.toml", "--store-b", "empty-store"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn explain_and_status_of_a_copied_manifest_compare_with_the_last_build_from_any_manifest() {
    // c.toml: a copy of m.toml with every head's learning rate changed, never built.
    let m = std::fs::read_to_string(built().join("m.toml")).unwrap();
    let dir = tempfile::tempdir_in(built()).unwrap();
    let c = dir.path().join("c.toml");
    std::fs::write(&c, m.replace("lr = 1e-3", "lr = 2e-3")).unwrap();
    let c = c.display().to_string();
    let instance = "classify[fraction=1.0,seed=0]";

    let explain = ok(&["explain", &c, instance]);
    assert!(
        explain.contains("the last build of `classify[fraction=1.0,seed=0]` was from m.toml")
            && explain.contains("parameter `lr` changed: 0.001 -> 0.002"),
        "{explain}"
    );
    insta::assert_snapshot!(
        "explain_copied_manifest",
        masked(&explain.replace(&c, "c.toml"))
    );

    let doc = json(&["explain", &c, instance, "--json"]);
    assert_eq!(doc["verdict"], "changed");
    assert_eq!(doc["compared_with"]["manifest"], "m.toml");
    assert_eq!(doc["compared_with"]["same_manifest"], false);
    assert_eq!(
        doc["changes"],
        serde_json::json!([{
            "change": "parameter", "depth": 1, "instance": instance, "name": "lr",
            "from": "0.001", "to": "0.002", "text": "parameter `lr` changed: 0.001 -> 0.002",
        }])
    );

    // --against: the other manifest's instance, built or not.
    let against = ok(&["explain", &c, instance, "--against", "m.toml"]);
    assert!(
        against.contains("its key differs from m.toml's")
            && against.contains("parameter `lr` changed: 0.001 -> 0.002"),
        "{against}"
    );
    let same = json(&["explain", &c, "pretrain", "--against", "m.toml", "--json"]);
    assert_eq!(same["verdict"], "same-key");

    // status: stale (built before under another key, from m.toml), not missing.
    let status = json(&["status", &c, "--json"]);
    let row = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == instance)
        .unwrap();
    assert_eq!(row["state"], "stale");
    assert_eq!(row["previous_manifest"], "m.toml");
    let text = ok(&["status", &c]);
    assert!(
        text.lines().any(|l| l.starts_with("stale")
            && l.contains(instance)
            && l.ends_with(", built from m.toml)")),
        "{text}"
    );
}

#[test]
fn help_lists_the_commands() {
    let help = ok(&["--help"]);
    for line in ["results", "diff", "explain"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(line)),
            "{help}"
        );
    }
    insta::assert_snapshot!("results_help", ok(&["results", "--help"]));
    insta::assert_snapshot!("diff_help", ok(&["diff", "--help"]));
}
