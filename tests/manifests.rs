//! The shipped manifests plan: the full reproduction grid (with its dataset and backbone folders
//! pointed at empty stand-ins, since the real ones are not here) and the demo.

use std::path::Path;

mod common;

use common::repo;

fn dry_run(dir: &Path, manifest: &Path) -> String {
    let store = dir.join("store");
    let args = [
        "run",
        &manifest.to_string_lossy(),
        "--dry-run",
        "--store",
        &store.to_string_lossy(),
    ];
    let out = common::adaptor(dir, &args).output().unwrap();
    let text = common::text(&out);
    assert!(
        out.status.success(),
        "dry run of {}:\n{text}",
        manifest.display()
    );
    text
}

fn count(text: &str, prefix: &str) -> usize {
    text.lines()
        .filter(|l| {
            l.starts_with("would run")
                && l.split_whitespace()
                    .nth(3)
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}

/// Points every `/data/...` and `/models/...` folder of a manifest at an empty folder under `dir`.
fn with_stand_in_folders(dir: &Path, text: &str) -> String {
    let mut text = text.to_string();
    for prefix in ["/data/", "/models/"] {
        let stand_in = format!("{}{prefix}", dir.display());
        text = text.replace(&format!("\"{prefix}"), &format!("\"{stand_in}"));
    }
    for line in text.lines() {
        if let Some(p) = line
            .split('"')
            .nth(1)
            .filter(|p| p.starts_with(&dir.display().to_string()))
        {
            std::fs::create_dir_all(p).unwrap();
        }
    }
    text
}

#[test]
fn the_reproduction_manifest_plans_the_whole_grid() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("manifests/reproduce.toml")).unwrap();
    let text = with_stand_in_folders(dir.path(), &text);
    let manifest = dir.path().join("reproduce.toml");
    std::fs::write(&manifest, text).unwrap();
    let out = dry_run(dir.path(), &manifest);

    // 15 adaptors (5 text × 3 vision); 4 tasks × 3 fractions × 3 seeds for each, and for the
    // no-adaptor ablation per vision backbone; images in 8 shards and a merge per table (MIMIC-CXR
    // with random training crops, RSNA and COVIDx at 224 without a crop). Classification is one
    // stage per task and hyper-parameter setting (rsna-1, rsna, covidx, covidx-100).
    assert_eq!(count(&out, "ingest["), 4);
    // Decode once: MIMIC-CXR at 256, RSNA and COVIDx at 224, for the three vision backbones.
    assert_eq!(count(&out, "preprocess-mimic"), 1);
    assert_eq!(count(&out, "preprocess["), 2);
    assert_eq!(count(&out, "text"), 5);
    assert_eq!(count(&out, "image-mimic["), 3 * (8 + 1));
    assert_eq!(count(&out, "image["), 6 * (8 + 1));
    assert_eq!(count(&out, "pretrain"), 15);
    assert_eq!(
        count(&out, "classify-rsna")
            + count(&out, "classify-covidx")
            + count(&out, "classify-cxrbert-"),
        15 * 2 * 3 * 3
    );
    assert_eq!(count(&out, "classify-rsna-1["), 12 * 3);
    assert_eq!(count(&out, "classify-covidx-100["), 12 * 3);
    assert_eq!(count(&out, "classify-none-"), 3 * 2 * 3 * 3);
    assert_eq!(count(&out, "segment-siim"), 15 * 3 * 3);
    assert_eq!(count(&out, "segment-rsna"), 15 * 3 * 3);
    assert_eq!(count(&out, "segment-none-"), 3 * 2 * 3 * 3);
    // Beyond the original: zero-shot RSNA and COVIDx and MIMIC-CXR retrieval per adaptor.
    assert_eq!(count(&out, "zero-shot"), 15 * 2);
    assert_eq!(count(&out, "retrieve"), 15);
    assert_eq!(count(&out, "report"), 1);
}

/// `adaptor status --json` of a manifest: instance → key.
fn keys(dir: &Path, manifest: &str) -> std::collections::BTreeMap<String, String> {
    let path = dir.join("m.toml");
    std::fs::write(&path, manifest).unwrap();
    let store = dir.join("store");
    let out = common::ok(
        dir,
        &[
            "status",
            "--json",
            &path.to_string_lossy(),
            "--store",
            &store.to_string_lossy(),
        ],
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    rows.iter()
        .map(|r| {
            (
                r["instance"].as_str().unwrap().to_string(),
                r["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Parameters added after artifacts of their kind existed (`encode-image`'s `train_crop` and
/// `crop_seed`, `segment`'s `normalize` and `augment`) leave the key alone at their default,
/// written or not, and change it otherwise.
#[test]
fn late_parameters_stay_out_of_the_key_at_their_default() {
    let dir = tempfile::tempdir().unwrap();
    let (data, weights) = (dir.path().join("data"), dir.path().join("weights"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&weights).unwrap();
    let manifest = |enc: &str, seg: &str| {
        format!(
            r#"
[datasets.raw]
kind = "siim"
root = "{}"

[backbones.v]
kind = "dinov2"
weights = "{}"

[stages.ingest]
kind = "ingest"
inputs.raw = "datasets.raw"

[stages.enc]
kind = "encode-image"
params = {{ {enc} }}
inputs = {{ records = "ingest", raw = "datasets.raw", backbone = "backbones.v" }}

[stages.seg]
kind = "segment"
params = {{ {seg} }}
inputs = {{ records = "ingest", raw = "datasets.raw", backbone = "backbones.v" }}
"#,
            data.display(),
            weights.display()
        )
    };
    let base = keys(dir.path(), &manifest("", ""));
    let spelled = keys(
        dir.path(),
        &manifest(
            r#"train_crop = "center", crop_seed = 42"#,
            r#"normalize = "imagenet", augment = "none""#,
        ),
    );
    assert_eq!(base, spelled);
    for (enc, seg, changed) in [
        (r#"train_crop = "random""#, "", "enc"),
        ("crop_seed = 7", "", "enc"),
        ("", r#"normalize = "half""#, "seg"),
        ("", r#"augment = "shift_scale_rotate""#, "seg"),
    ] {
        let k = keys(dir.path(), &manifest(enc, seg));
        assert_ne!(k[changed], base[changed], "{enc} {seg}");
        assert_eq!(k["ingest"], base["ingest"]);
        let other = if changed == "enc" { "seg" } else { "enc" };
        assert_eq!(k[other], base[other], "{enc} {seg}");
    }
}

/// The README's worked example ("Writing your own manifest") plans as the README says: one adaptor,
/// nine probes (fraction × seed), a zero-shot run and the report.
#[test]
fn the_readme_example_manifest_plans() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("## Writing your own manifest")
        .nth(1)
        .expect("README has the section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a toml block in the section");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("my.toml");
    std::fs::write(&manifest, with_stand_in_folders(dir.path(), toml)).unwrap();
    let out = dry_run(dir.path(), &manifest);
    assert_eq!(count(&out, "ingest["), 2, "{out}");
    assert_eq!(count(&out, "pretrain"), 1, "{out}");
    assert_eq!(count(&out, "classify["), 9, "{out}");
    assert_eq!(count(&out, "zero-shot"), 1, "{out}");
    assert_eq!(count(&out, "report"), 1, "{out}");
}
