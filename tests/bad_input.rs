//! Hostile input through the real `adaptor` binary: an image whose header claims a huge size,
//! the decode-limit overrides, and malformed keys read back from the store. Each must end in a
//! clear error naming the file, never an abort (exit 134) or a panic (exit 101).

use std::path::{Path, PathBuf};
use std::process::Output;

use stages::synth::{self, SynthDataset};

mod common;

use common::text;

/// `adaptor ARGS` in `dir` with the default decode limits, except those `env` sets.
fn adaptor(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = common::adaptor(dir, args);
    c.env_remove("ADAPTOR_MAX_IMAGE_PIXELS")
        .env_remove("ADAPTOR_MAX_IMAGE_BYTES");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A COVIDx miniature with one training PNG replaced by `bytes`: (raw root, the image).
fn covidx_with(dir: &Path, bytes: &[u8]) -> (PathBuf, PathBuf) {
    let raw = dir.join("raw");
    synth::generate_with_size(SynthDataset::Covidx, &raw, 12, 3, 32).unwrap();
    let list = std::fs::read_to_string(raw.join("train_COVIDx9A.txt")).unwrap();
    let file = list
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .find(|f| f.ends_with(".png"))
        .expect("a PNG in the training list");
    let image = raw.join("train").join(file);
    std::fs::write(&image, bytes).unwrap();
    (raw, image)
}

/// `adaptor ingest covidx --raw RAW --out out`.
fn ingest_args(raw: &Path) -> Vec<&str> {
    vec![
        "ingest",
        "covidx",
        "--raw",
        raw.to_str().unwrap(),
        "--out",
        "out",
    ]
}

#[test]
fn ingest_of_a_png_claiming_65535_squared_rgba16_fails_cleanly_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, image) = covidx_with(tmp.path(), &synth::oversized_png(65_535, 65_535));
    let args = ingest_args(&raw);
    // Before the decode limits this aborted with exit 134 on a failed 34 GB allocation.
    let out = adaptor(tmp.path(), &args, &[]);
    // Exit 1: the work (ingesting this dataset) failed on its input, not the command line.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains(&format!(
            "image {}: the header says 65535 × 65535 = 4294836225 pixels, over the decode \
             limit of 268435456 pixels (ADAPTOR_MAX_IMAGE_PIXELS raises it)",
            image.display()
        )),
        "{err}"
    );
    // With skip_bad the row is skipped and the rest ingested.
    let mut skip = args.clone();
    skip.push("--skip-bad");
    let out = adaptor(tmp.path(), &skip, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 bad row(s) skipped"),
        "{}",
        text(&out)
    );
}

#[test]
fn decode_limits_are_overridden_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    // A normal 32 × 32 PNG, then limits below and above its size.
    let (raw, image) = covidx_with(tmp.path(), &[]);
    std::fs::remove_file(&image).unwrap();
    let other = std::fs::read_dir(raw.join("train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "png") && *p != image)
        .unwrap();
    std::fs::copy(&other, &image).unwrap();
    let args = ingest_args(&raw);
    let out = adaptor(tmp.path(), &args, &[("ADAPTOR_MAX_IMAGE_PIXELS", "1000")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("over the decode limit of 1000 pixels"),
        "{}",
        text(&out)
    );
    let out = adaptor(tmp.path(), &args, &[("ADAPTOR_MAX_IMAGE_BYTES", "100")]);
    assert!(
        text(&out).contains("over the decode memory budget of 100 bytes"),
        "{}",
        text(&out)
    );
    let out = adaptor(tmp.path(), &args, &[("ADAPTOR_MAX_IMAGE_PIXELS", "4096")]);
    assert!(out.status.success(), "{}", text(&out));
    let out = adaptor(tmp.path(), &args, &[("ADAPTOR_MAX_IMAGE_BYTES", "1GB")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: ADAPTOR_MAX_IMAGE_BYTES=`1GB` is not a positive integer"
    );
}

fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) || name.is_empty() {
            out.push(p);
        }
    }
    out
}

/// Replaces the `"key"` of a JSON record.
fn set_key(path: &Path, key: &str) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["key"] = serde_json::Value::String(key.into());
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn malformed_keys_read_back_from_the_store_are_reported_not_panicked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("m.toml"),
        "[stages.a]\nkind = 'command'\nparams.run = 'echo hi > $OUT/o'\n",
    )
    .unwrap();
    let out = adaptor(dir, &["run", "m.toml", "-q"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.join("artifacts");
    // A changed parameter: `status` and `explain` now read the run index for the previous key.
    std::fs::write(
        dir.join("m.toml"),
        "[stages.a]\nkind = 'command'\nparams.run = 'echo bye > $OUT/o'\n",
    )
    .unwrap();
    let out = adaptor(dir, &["status", "m.toml"], &[]);
    assert!(text(&out).contains("(was "), "{}", text(&out));

    // The run index.
    let index = files_named(&store.join("_index"), "");
    assert_eq!(index.len(), 1, "{index:?}");
    set_key(&index[0], "abc");
    // A damaged index record is stale, with a warning naming it (the store's rule for every
    // small record, docs/store.md): the command goes on, it never panics.
    for args in [&["status", "m.toml"][..], &["explain", "m.toml", "a"]] {
        let out = adaptor(dir, args, &[]);
        let t = text(&out);
        assert_ne!(out.status.code(), Some(101), "panicked: {t}");
        assert!(
            t.contains(&index[0].file_name().unwrap().to_string_lossy().to_string())
                && t.contains("`abc` is not a stage key (64 lowercase hex digits)"),
            "{args:?}: {t}"
        );
    }

    // The artifact's own `_manifest.json`: `show` by folder and by key prefix, and `explain`.
    std::fs::remove_dir_all(store.join("_index")).unwrap();
    let manifest = files_named(&store.join("command"), "_manifest.json").remove(0);
    let folder = manifest.parent().unwrap().to_path_buf();
    let prefix = folder.file_name().unwrap().to_string_lossy()[..8].to_string();
    set_key(&manifest, &"Z".repeat(64));
    for args in [
        vec!["show", folder.to_str().unwrap()],
        vec!["show", prefix.as_str()],
    ] {
        let out = adaptor(dir, &args, &[]);
        let t = text(&out);
        assert_ne!(out.status.code(), Some(101), "panicked: {t}");
        assert!(!out.status.success(), "{t}");
        assert!(
            t.contains("_manifest.json") && t.contains("is not a stage key"),
            "{args:?}: {t}"
        );
    }
}
