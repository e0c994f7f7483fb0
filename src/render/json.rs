//! The `--json` output of `show`, `gc`, `verify` and `stages`: one JSON document each, pretty
//! printed, with the field names docs/running.md lists (stable: fields are only ever added).
//! Sizes are bytes; paths are where a person or script can open them (a file path on a local
//! store, `s3://bucket/prefix/...` otherwise), next to the store-relative path where one exists.

use pipeline::ops::{GcReport, Verified};
use pipeline::store::ArtifactManifest;
use pipeline::StoreUrl;
use serde_json::{json, Value};

use super::stages::StageDoc;
use super::{bad_artifacts, display_path};

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialise") + "\n"
}

/// `show --json`: the artifact's `_manifest.json` as stored (format, key, kind, version,
/// instance, manifest, params, inputs, files, started_unix, seconds, tool, host, and job,
/// attempt and peak_rss_mib where present), plus `location` (its folder) and, with `--verbose`, `log`.
pub fn render_show_json(m: &ArtifactManifest, location: &str, log: Option<&str>) -> String {
    let mut v = serde_json::to_value(m).expect("a manifest serialises");
    v["location"] = location.into();
    if let Some(log) = log {
        v["log"] = log.into();
    }
    pretty(&v)
}

/// `gc --json` (and `gc --dry-run --json`): what was (or would be) deleted, what was skipped and
/// why, and how many referenced artifacts were kept.
pub fn render_gc_json(report: &GcReport, dry_run: bool, store: &StoreUrl) -> String {
    let deleted: Vec<Value> = report
        .deleted
        .iter()
        .map(|(path, bytes)| {
            json!({"path": path, "location": display_path(store, path), "bytes": bytes})
        })
        .collect();
    let skipped: Vec<Value> = report
        .skipped
        .iter()
        .map(|(path, why)| json!({"path": path, "reason": why}))
        .collect();
    pretty(&json!({
        "store": store.to_string(),
        "dry_run": dry_run,
        "deleted": deleted,
        "deleted_bytes": report.deleted.iter().map(|(_, b)| b).sum::<u64>(),
        "skipped": skipped,
        "kept": report.kept,
    }))
}

/// `verify --json`: each checked artifact with its bad files (none: it is good) and where it
/// was quarantined, then the totals.
pub fn render_verify_json(checked: &[Verified], store: &StoreUrl) -> String {
    let artifacts: Vec<Value> = checked
        .iter()
        .map(|v| {
            let bad: Vec<Value> = v
                .report
                .bad
                .iter()
                .map(|f| {
                    json!({
                        "path": f.path,
                        "location": display_path(store, &f.location),
                        "problem": f.problem,
                    })
                })
                .collect();
            json!({
                "kind": v.kind,
                "key": v.key.as_str(),
                "ok": bad.is_empty(),
                "files": v.report.files,
                "bytes": v.report.bytes,
                "bad_files": bad,
                "quarantined": v.quarantined.as_ref().filter(|_| !v.report.bad.is_empty())
                    .map(|to| display_path(store, to)),
            })
        })
        .collect();
    pretty(&json!({
        "store": store.to_string(),
        "artifacts": artifacts,
        "checked": checked.len(),
        "bad": bad_artifacts(checked),
    }))
}

/// `stages --json`: each kind with its parameters (type, default as a JSON value or `null` when
/// required), inputs and sharding, then the runner's own parameters.
pub fn render_stages_json(stages: &[StageDoc], runner_params: &[(&str, &str)]) -> String {
    let stages: Vec<Value> = stages
        .iter()
        .map(|s| {
            json!({
                "kind": s.kind,
                "version": s.version,
                "about": s.about,
                "params": s.params.iter().map(|p| json!({
                    "name": p.name,
                    "type": p.ty,
                    "required": p.default.is_none(),
                    "default": p.default_json,
                    "doc": p.doc,
                })).collect::<Vec<_>>(),
                "inputs": s.inputs.iter().map(|i| json!({
                    "name": i.name, "required": i.required, "doc": i.doc,
                })).collect::<Vec<_>>(),
                "sharding": s.sharding.as_ref().map(|(param, merge)| json!({
                    "param": param, "merge": merge,
                })),
            })
        })
        .collect();
    let runner: Vec<Value> = runner_params
        .iter()
        .map(|(name, doc)| json!({"name": name, "doc": doc}))
        .collect();
    pretty(&json!({"stages": stages, "runner_params": runner}))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{gc_report, local_store, manifest, s3_store, verified};
    use super::super::stages::{InputDoc, ParamDoc};
    use super::*;

    #[test]
    fn show_json() {
        let m = manifest(r#"{"run": "cat $IN_DEPS/notes.txt > $OUT/o", "vars": {"seed": 1}}"#);
        let location = format!("/data/artifacts/command/{}", "1".repeat(64));
        insta::assert_snapshot!(render_show_json(&m, &location, Some("wrote o")));
    }

    #[test]
    fn gc_json() {
        insta::assert_snapshot!(render_gc_json(&gc_report(), true, &s3_store()));
    }

    #[test]
    fn verify_json() {
        insta::assert_snapshot!(render_verify_json(&verified(), &local_store()));
    }

    #[test]
    fn stages_json() {
        let stages = [StageDoc {
            kind: "encode-text".into(),
            version: 1,
            about: "embed texts".into(),
            params: vec![
                ParamDoc {
                    name: "batch_size".into(),
                    ty: "integer".into(),
                    default: Some("64".into()),
                    default_json: Some(64.into()),
                    doc: "items per forward pass".into(),
                },
                ParamDoc {
                    name: "shard".into(),
                    ty: "string".into(),
                    default: None,
                    default_json: None,
                    doc: "i/n".into(),
                },
            ],
            inputs: vec![InputDoc {
                name: "records".into(),
                required: true,
                doc: "a records table".into(),
            }],
            sharding: Some(("shard".into(), "concatenates the tables".into())),
        }];
        insta::assert_snapshot!(render_stages_json(&stages, &[("timeout", "a time limit")]));
    }
}
