//! The `adaptor-torch` binary as people run it (`adaptor embed ...` forwards here): embed,
//! convert-resnet-ae, env; always with `LD_LIBRARY_PATH` unset (the rpath must suffice).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use artifacts::table::EmbeddingTable;
use common::*;

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_adaptor-torch"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    out
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "adaptor-torch {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn embed_text_keys_are_line_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("texts.txt");
    std::fs::write(
        &input,
        "That is a happy person\nThat is a happy dog\nThat is a very happy person\nToday is a sunny day\n",
    )
    .unwrap();
    let output = tmp.path().join("out.parquet");
    let stdout = ok(&[
        "embed",
        "text",
        "--backbone",
        s(&minilm()),
        "--pooling",
        "mean",
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--threads",
        "2",
    ]);
    assert_eq!(
        stdout.trim(),
        format!("wrote 4 rows to {}", output.display())
    );
    let t = EmbeddingTable::read(&output).unwrap();
    assert_eq!(t.keys, ["0", "1", "2", "3"]);
    assert!(
        t.splits.is_none(),
        "ad-hoc tables have key and embedding only"
    );
    assert_eq!(
        (t.meta.dim, t.meta.backbone.as_str()),
        (384, "all-MiniLM-L6-v2")
    );
    let unit = |i: usize| {
        let r = t.row(i);
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter().map(|v| v / n).collect::<Vec<f32>>()
    };
    let cos = unit(0).iter().zip(unit(1)).map(|(a, b)| a * b).sum::<f32>() as f64;
    let golden = golden("minilm.json");
    let sentences: Vec<String> = serde_json::from_value(golden["sentences"].clone()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&input).unwrap(),
        sentences.join("\n") + "\n"
    );
    let want = golden["cosine_with_first"]["1"].as_f64().unwrap();
    assert!((cos - want).abs() < 1e-4, "cos(0,1) = {cos}, golden {want}");
}

#[test]
fn embed_image_keys_are_file_names_and_convert_resnet_ae_makes_a_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.png");
    let b = tmp.path().join("b.png");
    std::fs::copy(fixtures().join("preprocess-input.png"), &a).unwrap();
    std::fs::copy(workspace().join("data/resize/in_97x131.png"), &b).unwrap();
    let out = tmp.path().join("dino.parquet");
    ok(&[
        "embed",
        "image",
        "--backbone",
        s(&fixtures().join("dinov2")),
        "--resize",
        "64",
        "--image-size",
        "56",
        "--input",
        s(&a),
        s(&b),
        "--output",
        s(&out),
    ]);
    let t = EmbeddingTable::read(&out).unwrap();
    assert_eq!(t.keys, ["a.png", "b.png"]);
    assert_eq!(
        (t.meta.backbone_kind.as_str(), t.meta.pooling.as_str()),
        ("dinov2", "cls")
    );

    let ae = tmp.path().join("resnet-ae");
    let msg = ok(&[
        "convert-resnet-ae",
        "--input",
        s(&fixtures().join("resnet-ae/module-legacy.pt")),
        "--output",
        s(&ae),
    ]);
    assert!(msg.contains("blocks [2, 2, 3, 2]"), "{msg}");
    let out = tmp.path().join("ae.parquet");
    ok(&[
        "embed",
        "image",
        "--backbone",
        s(&ae),
        "--input",
        s(&a),
        "--output",
        s(&out),
    ]);
    let t = EmbeddingTable::read(&out).unwrap();
    assert_eq!(
        (t.meta.backbone_kind.as_str(), t.meta.dim, t.keys.len()),
        ("resnet-ae", 16, 1)
    );
}

#[test]
fn errors_go_to_stderr_with_status_1() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("t.txt");
    std::fs::write(&input, "x\n").unwrap();
    let out = run(&[
        "embed",
        "text",
        "--backbone",
        s(&fixtures().join("dinov2")),
        "--input",
        s(&input),
        "--output",
        s(&tmp.path().join("o.parquet")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown model_type `dinov2` (supported: bert, cxr-bert)"),
        "{err}"
    );
}

#[test]
fn env_reports_libtorch_and_cuda() {
    let out = ok(&["env"]);
    assert!(
        out.contains("libtorch: ") && out.contains("libtorch_cpu.so (torch 2.11.0"),
        "{out}"
    );
    assert!(out.contains("cuda: "), "{out}");
}

/// An image whose header claims 65,535 × 65,535 RGBA16 is refused before decoding, and the
/// message names the file (it used to fail on the allocation without saying which file).
#[test]
fn embed_names_an_image_over_the_decode_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("a.png");
    std::fs::copy(fixtures().join("preprocess-input.png"), &good).unwrap();
    let huge = tmp.path().join("huge.png");
    std::fs::write(&huge, stages::synth::oversized_png(65_535, 65_535)).unwrap();
    let out = run(&[
        "embed",
        "image",
        "--backbone",
        s(&fixtures().join("dinov2")),
        "--resize",
        "64",
        "--image-size",
        "56",
        "--input",
        s(&good),
        s(&huge),
        "--output",
        s(&tmp.path().join("o.parquet")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: cannot decode image: the header says 65535 × 65535 = 4294836225 pixels, over \
             the decode limit of 268435456 pixels (ADAPTOR_MAX_IMAGE_PIXELS raises it)",
            huge.display()
        )),
        "{err}"
    );
}

/// `--warmup N` (hidden, for bench/gpu/run.sh) runs N untimed forward passes before the loop,
/// says so on stderr and changes no output: each table equals the one written without it.
#[test]
fn embed_warmup_is_logged_and_changes_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let texts = tmp.path().join("texts.txt");
    std::fs::write(&texts, "no acute process\nsmall left pleural effusion\n").unwrap();
    let image = tmp.path().join("a.png");
    std::fs::copy(fixtures().join("preprocess-input.png"), &image).unwrap();
    let (minilm, dinov2) = (minilm(), fixtures().join("dinov2"));
    let cases: [(&str, Vec<&str>); 2] = [
        (
            "text",
            vec![
                "--backbone",
                s(&minilm),
                "--pooling",
                "mean",
                "--input",
                s(&texts),
            ],
        ),
        (
            "image",
            vec![
                "--backbone",
                s(&dinov2),
                "--resize",
                "64",
                "--image-size",
                "56",
                "--input",
                s(&image),
            ],
        ),
    ];
    for (what, args) in cases {
        let mut rows = Vec::new();
        for warmup in ["0", "2"] {
            let output = tmp.path().join(format!("{what}-{warmup}.parquet"));
            let mut all = vec!["embed", what];
            all.extend(&args);
            all.extend(["--output", s(&output), "--threads", "2", "--warmup", warmup]);
            let out = run(&all);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{what}: {err}");
            assert_eq!(
                err.contains("warm-up: 2 untimed forward passes in "),
                warmup == "2",
                "{what} --warmup {warmup}: {err}"
            );
            let t = EmbeddingTable::read(&output).unwrap();
            rows.push((0..t.rows()).map(|i| t.row(i).to_vec()).collect::<Vec<_>>());
        }
        assert_eq!(rows[0], rows[1], "{what}: the warm-up changed the table");
    }
}
