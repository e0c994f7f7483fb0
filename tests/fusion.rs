//! The fusion variant where it cannot be used: `segment` refuses a fusion adaptor at plan time,
//! naming both stages and both widths, before anything runs. (Its learning test is in
//! tests/learning.rs; the comparison with the original is manifests/fusion-vs-original.toml.)

mod common;
use common::{adaptor, repo, text};

#[test]
fn segment_over_a_fusion_adaptor_is_refused_at_plan_time() {
    let manifest = std::fs::read_to_string(repo().join("manifests/fusion-vs-original.toml"))
        .unwrap()
        .replace("\"../", &format!("\"{}/", repo().display()))
        + r#"
[stages.synth-seg]
kind = "synth"
params = { dataset = "siim", n = 12, seed = 11, image_size = 64 }

[stages.ingest-seg]
kind = "ingest"
inputs.raw = "synth-seg"

[stages.segment-fusion]
kind = "segment"
inputs = { records = "ingest-seg", raw = "synth-seg", backbone = "backbones.tiny-vit-random", adaptor = "pretrain-fusion" }
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), &manifest).unwrap();
    let out = adaptor(dir.path(), &["run", "m.toml", "--dry-run"])
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for part in [
        "stages.segment-fusion.inputs.adaptor",
        "segment-fusion: `pretrain-fusion` trains the fusion variant",
        "one 512-d vector",
        "768-d vector per patch token",
    ] {
        assert!(said.contains(part), "`{part}` missing from:\n{said}");
    }
    assert!(!dir.path().join("artifacts").exists(), "something ran");

    // The same segmentation over the original variant plans.
    let original = manifest.replace(
        "backbones.tiny-vit-random\", adaptor = \"pretrain-fusion\" }",
        "backbones.tiny-vit-random\", adaptor = \"pretrain\" }",
    );
    std::fs::write(dir.path().join("m.toml"), original).unwrap();
    let out = adaptor(dir.path(), &["run", "m.toml", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
