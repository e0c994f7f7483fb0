//! `report.html` in a real browser: the `report` stage runs over fixture results laid out as in a
//! local store, then headless Chromium (Debian's `chromium`, installed by
//! `scripts/test-assets-browser.sh`) opens the page. A copy of the page with a probe script (the
//! page itself has none) reports each image's decoded size, the tables, every load error and every
//! resource fetched; a screenshot must decode to a page that is not blank. A twin with one broken
//! image must fail the same checks, so they can fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use artifacts::report::{run_stage, REPORT_HTML, RESULT_FILE};
use pipeline::{InputArtifact, InputOrigin, NoProgress, Params, StageContext, StageKey};
use serde_json::{json, Value};

mod common;
use common::result;

/// Runs after the page's own content: records errors from the start and measures at `load`.
const PROBE: &str = r#"<script>
window.probeErrors = [];
addEventListener('error', e => probeErrors.push(String(e.message || (e.target && e.target.src) || 'error')), true);
addEventListener('load', () => {
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}));
  const tables = [...document.querySelectorAll('table')].map(t => ({rows: t.rows.length, width: t.getBoundingClientRect().width}));
  const resources = performance.getEntriesByType('resource').map(r => r.name);
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({images, tables, resources, errors: probeErrors});
  document.body.appendChild(pre);
});
</script>"#;

fn key(c: char) -> StageKey {
    StageKey::parse(&c.to_string().repeat(64)).unwrap()
}

/// `<store>/<kind>/<key>/` with `_manifest.json` (instance, parameters) and `files`.
fn artifact(
    store: &Path,
    kind: &str,
    key: &StageKey,
    instance: &str,
    params: Value,
    files: &[(&str, Vec<u8>)],
) -> InputArtifact {
    let dir = store.join(kind).join(key.as_str());
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let manifest = json!({
        "format": 1, "key": key.as_str(), "kind": kind, "version": 1, "instance": instance,
        "manifest": "demo.toml", "params": params, "inputs": {}, "files": [],
        "started_unix": 0.0, "seconds": 1.0, "tool": "test", "host": "test",
    });
    std::fs::write(dir.join("_manifest.json"), manifest.to_string()).unwrap();
    InputArtifact {
        path: dir,
        origin: InputOrigin::Stage {
            kind: kind.into(),
            instance: instance.into(),
            key: key.clone(),
        },
    }
}

/// A small RGB gradient as PNG: the training curve a `train-adaptor` artifact holds.
fn gradient_png() -> Vec<u8> {
    let (w, h) = (120u32, 60u32);
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    let mut writer = enc.write_header().unwrap();
    let data: Vec<u8> = (0..w * h)
        .flat_map(|i| [(i % w * 2) as u8, (i / w * 4) as u8, 200])
        .collect();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    out
}

/// A store with four evaluations and one pre-training run, and the report stage run over it.
fn report_in_store(store: &Path) -> PathBuf {
    let mut results = Vec::new();
    let cells = [
        ('a', "bert", "pretrained", 0.01, 0, 0.80),
        ('b', "bert", "pretrained", 0.01, 1, 0.82),
        ('c', "bert", "pretrained", 1.0, 0, 0.86),
        ('d', "none", "none", 1.0, 0, 0.78),
    ];
    for (k, text, adaptor, fraction, seed, auroc) in cells {
        let instance = format!("classify[text={text},fraction={fraction},seed={seed}]");
        let json = serde_json::to_vec(&result(text, adaptor, fraction, seed, auroc)).unwrap();
        let params = json!({"fraction": fraction, "seed": seed, "lr": 0.001, "head": "mlp"});
        results.push(artifact(
            store,
            "classify",
            &key(k),
            &instance,
            params,
            &[(RESULT_FILE, json)],
        ));
    }
    let report = json!({"trainable_params": 1234, "epochs_completed": 8, "initial_val_loss": 4.1,
        "best_val_loss": 2.0, "best_recall": {"image_to_text_r1": 0.1, "image_to_text_r5": 0.3,
        "image_to_text_r10": 0.5, "text_to_image_r1": 0.12, "text_to_image_r5": 0.33,
        "text_to_image_r10": 0.52, "pairs": 100}});
    let pretraining = vec![artifact(
        store,
        "train-adaptor",
        &key('e'),
        "pretrain[text=bert]",
        json!({"lr": 0.0002, "epochs": 8}),
        &[
            ("report.json", report.to_string().into_bytes()),
            (
                "adaptor.json",
                br#"{"model": {"variant": "original"}}"#.to_vec(),
            ),
            (
                "provenance.json",
                br#"{"image": {"backbone": "dinov2-s"}, "text": {"backbone": "bert"}}"#.to_vec(),
            ),
            ("training_curve.png", gradient_png()),
        ],
    )];
    let out = store.join("report").join(key('f').as_str());
    std::fs::create_dir_all(&out).unwrap();
    let ctx = StageContext::new(
        "report".into(),
        key('f'),
        Params::new(),
        BTreeMap::from([
            ("results".to_string(), results),
            ("pretraining".to_string(), pretraining),
        ]),
        out.clone(),
        1,
        None,
        Arc::new(NoProgress),
        Arc::new(AtomicBool::new(false)),
    );
    run_stage(&ctx).unwrap();
    out
}

/// Headless Chromium on `page` with `args`; returns stdout and the console lines of stderr.
fn chromium(page: &Path, args: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg("chromium")
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot start chromium ({e}): run scripts/test-assets-browser.sh")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{stderr}",
        out.status
    );
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// What the probe saw in `html` (written beside the report, so relative links resolve alike),
/// the console lines and the rendered DOM; `args` add to Chromium's (a screenshot).
fn probe(dir: &Path, name: &str, html: &str, args: &[&str]) -> (Value, Vec<String>, String) {
    let probed = html.replacen("<head>", &format!("<head>\n{PROBE}"), 1);
    let path = dir.join(name);
    std::fs::write(&path, probed).unwrap();
    let mut args = args.to_vec();
    args.extend(["--virtual-time-budget=5000", "--dump-dom"]);
    let (dom, console) = chromium(&path, &args);
    let start = dom.find("<pre id=\"probe\">").unwrap_or_else(|| {
        panic!("no probe output in the DOM of {name}:\n{dom}");
    }) + "<pre id=\"probe\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    (serde_json::from_str(&text).unwrap(), console, dom)
}

/// Every failure of the checks on what the probe saw: broken images, errors, fetches, tables.
fn failures(seen: &Value, console: &[String], images: usize, tables: usize) -> Vec<String> {
    let mut bad = Vec::new();
    let imgs = seen["images"].as_array().unwrap();
    if imgs.len() != images {
        bad.push(format!("{} images, expected {images}", imgs.len()));
    }
    for i in imgs {
        if i["complete"] != true || i["width"].as_u64().unwrap_or(0) == 0 {
            bad.push(format!("broken image: {i}"));
        }
    }
    for e in seen["errors"].as_array().unwrap() {
        bad.push(format!("load error: {e}"));
    }
    for r in seen["resources"].as_array().unwrap() {
        bad.push(format!(
            "fetched a resource (the page must be self-contained): {r}"
        ));
    }
    let t = seen["tables"].as_array().unwrap();
    if t.len() != tables
        || t.iter()
            .any(|t| t["rows"].as_u64() < Some(2) || t["width"] == 0)
    {
        bad.push(format!("tables: {t:?}, expected {tables} with rows"));
    }
    bad.extend(console.iter().map(|c| format!("console: {c}")));
    bad
}

#[test]
fn the_report_page_renders_in_chromium_with_every_image_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = report_in_store(&store);
    let html = std::fs::read_to_string(out.join(REPORT_HTML)).unwrap();

    // Self-contained and script-free; every link to an instance resolves inside the store.
    assert!(!html.contains("<script"), "the page carries a script");
    for src in html.split("src=\"").skip(1) {
        assert!(
            src.starts_with("data:image/png;base64,"),
            "src={}",
            &src[..40]
        );
    }
    let hrefs: Vec<&str> = html
        .split("href=\"")
        .skip(1)
        .map(|h| &h[..h.find('"').unwrap()])
        .filter(|h| !h.starts_with('#'))
        .collect();
    assert_eq!(
        hrefs.len(),
        4 + 4 + 1,
        "a link per run: cells, all metrics, pre-training"
    );
    for h in hrefs {
        assert!(
            out.join(h).join("_manifest.json").is_file(),
            "{h} resolves to no artifact"
        );
    }

    // One results table (its plot), the pre-training table (its curve), all metrics; the page
    // as rendered, and a screenshot of it in the same run.
    let shot = dir.path().join("report.png");
    let (seen, console, dom) = probe(
        &out,
        "probe.html",
        &html,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600",
        ],
    );
    assert_eq!(
        failures(&seen, &console, 2, 3),
        Vec::<String>::new(),
        "{seen}"
    );
    for text in [
        "RSNA Pneumonia classification, AUROC (mlp head)",
        "<span class=\"v\">81.0</span>",
        "pub. 81.3",
        "no adaptor (backbone → head)",
        "Pre-training",
        "10.0 / 30.0 / 50.0",
        "<dt>lr</dt><dd>0.001</dd>",
    ] {
        assert!(dom.contains(text), "the rendered page lacks `{text}`");
    }

    // The same checks fail on a twin with one broken image.
    let broken = html.replacen(
        "<figure><img src=\"data:image/png;base64,",
        "<figure><img src=\"data:image/png;base64,AAAA",
        1,
    );
    let (seen, console, _) = probe(&out, "broken.html", &broken, &[]);
    let bad = failures(&seen, &console, 2, 3);
    assert!(bad.iter().any(|b| b.starts_with("broken image")), "{bad:?}");

    // The screenshot decodes at the window's size and is not a blank page.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!((frame.width, frame.height), (1280, 1600));
    let bytes = &buf[..frame.buffer_size()];
    let px = frame.color_type.samples();
    let distinct: std::collections::BTreeSet<&[u8]> = bytes.chunks(px).collect();
    assert!(
        distinct.len() > 50,
        "a blank screenshot ({} colours)",
        distinct.len()
    );
}
