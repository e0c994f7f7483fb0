//! The `synth` and `ingest` stages through the runner's contract.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pipeline::{
    InputArtifact, InputOrigin, NoProgress, Params, StageContext, StageKey, StageRegistry, Value,
};

fn ctx(
    params: Params,
    inputs: BTreeMap<String, Vec<InputArtifact>>,
    out: &std::path::Path,
) -> StageContext {
    StageContext::new(
        "test".into(),
        StageKey::parse(&"0".repeat(64)).unwrap(),
        params,
        inputs,
        out.to_path_buf(),
        2,
        None,
        Arc::new(NoProgress),
        Arc::new(AtomicBool::new(false)),
    )
}

fn resolved(reg: &StageRegistry, kind: &str, set: &[(&str, Value)]) -> Params {
    let stage = reg.get(kind).unwrap();
    let mut p: Params = stage
        .params()
        .into_iter()
        .filter_map(|s| s.default.map(|d| (s.name.to_string(), d)))
        .collect();
    for (k, v) in set {
        p.insert(k.to_string(), v.clone());
    }
    stage.validate(&p).unwrap();
    p
}

#[test]
fn synth_then_ingest_through_the_stage_contract() {
    let mut reg = StageRegistry::new();
    stages::register(&mut reg);
    // The kinds that need no libtorch run in this process: preprocess and the report too.
    assert_eq!(
        reg.kinds().collect::<Vec<_>>(),
        ["ingest", "preprocess", "report", "synth"]
    );
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("synth");
    std::fs::create_dir(&raw).unwrap();
    let p = resolved(
        &reg,
        "synth",
        &[
            ("dataset", Value::Str("siim".into())),
            ("n", Value::Int(10)),
            ("image_size", Value::Int(64)),
        ],
    );
    reg.get("synth")
        .unwrap()
        .run(&ctx(p, BTreeMap::new(), &raw))
        .unwrap();

    let out = tmp.path().join("ingest");
    std::fs::create_dir(&out).unwrap();
    let input = InputArtifact {
        path: raw.clone(),
        origin: InputOrigin::Stage {
            kind: "synth".into(),
            instance: "synth[siim]".into(),
            key: StageKey::parse(&"1".repeat(64)).unwrap(),
        },
    };
    let p = resolved(&reg, "ingest", &[("skip_bad", Value::Bool(true))]);
    reg.get("ingest")
        .unwrap()
        .run(&ctx(
            p,
            BTreeMap::from([("raw".to_string(), vec![input])]),
            &out,
        ))
        .unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["dataset"], "siim");
    assert_eq!(summary["rows"], 10);
    assert!(out.join("records.parquet").is_file());
    assert!(!out.join("skipped.parquet").exists());

    let bad = resolved(&reg, "ingest", &[]);
    let mut bad = bad;
    bad.insert("split_seed".into(), Value::Int(-1));
    assert_eq!(
        reg.get("ingest")
            .unwrap()
            .validate(&bad)
            .unwrap_err()
            .to_string(),
        "parameter `split_seed`: split seed -1 is outside numpy's range 0..=4294967295"
    );
}

/// The planner validates a kind's typed parameters once and names the key at fault, with the
/// manifest's line and column; a value set through a matrix axis is reported at its template.
#[test]
fn parameter_errors_name_the_key_and_where_it_is() {
    let mut reg = StageRegistry::new();
    stages::register(&mut reg);
    stages::register_torch(&mut reg, "/nonexistent/adaptor-torch");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.toml");
    let manifest = |params: &str| {
        format!(
            "store = \"{}\"\n\n[datasets.rsna]\nkind = \"rsna\"\nroot = \"{}\"\n\n\
             [matrix]\nf = [0.1, 1.5]\n\n[stages.ingest]\nkind = \"ingest\"\n\
             inputs.raw = \"datasets.rsna\"\n\n[stages.feats]\nkind = \"encode-image\"\n\
             inputs = {{ records = \"ingest\", raw = \"datasets.rsna\", backbone = \"backbones.dino\" }}\n\n\
             [backbones.dino]\nkind = \"dinov2\"\nweights = \"{}\"\n\n\
             [stages.classify]\nkind = \"classify\"\n{params}\n\
             inputs = {{ features = \"feats\", records = \"ingest\" }}\n",
            tmp.path().join("store").display(),
            tmp.path().display(),
            tmp.path().display(),
        )
    };
    let error = |params: &str| {
        std::fs::write(&path, manifest(params)).unwrap();
        let e = pipeline::plan::load(&path, &reg).unwrap_err().to_string();
        e.replace(&tmp.path().display().to_string(), "$DIR")
    };
    assert_eq!(
        error("params.fraction = 1.5"),
        "$DIR/m.toml:24:8: stages.classify.params.fraction: must be in (0, 1], got 1.5"
    );
    assert_eq!(
        error("foreach = [\"f\"]\nparams = { fraction = \"${f}\", epochs = 3 }"),
        "$DIR/m.toml:25:12: stages.classify.params.fraction: must be in (0, 1], got 1.5"
    );
    assert_eq!(
        error("params = { head = \"mlp\", crop = 3 }"),
        "$DIR/m.toml:24:26: stages.classify.params.crop: unknown parameter for stage kind \
         `classify` (known: head, fraction, seed, adaptor_init, epochs, batch_size, lr, \
         weight_decay, patience, device)"
    );
}
