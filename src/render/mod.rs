//! Everything a person reads from the `adaptor` binary, as pure functions from data to text: no
//! printing, no store or file access, no clock. The commands gather the data, call a `render_*`
//! function and print what it returns; each function has an insta snapshot test beside it.

mod artifact;
mod dag;
mod diff;
mod json;
mod locate;
mod results;
mod run;
mod stages;
mod status;
mod store;

pub use artifact::render_show;
pub use dag::{render_dot, render_mermaid, Dag, DagNode};
pub use diff::{render_diff, render_diff_json, DiffSide, DiffView};
pub use json::{render_gc_json, render_show_json, render_stages_json, render_verify_json};
pub use locate::{
    render_forget, render_not_current, render_path, render_path_json, render_pull,
    render_pull_json, Located, PullTotals, Pulled,
};
pub use results::{
    name_some, render_results, render_results_csv, render_results_json, ResultsView,
};
pub use run::{
    render_dry_run, render_exec_failure, render_failures, render_ingest_skipped,
    render_run_summary, render_synth_summary, render_unverified_inputs, PlannedInstance,
    RunSummary,
};
pub use stages::{render_stages, StageDoc};
pub use status::{
    render_explain, render_explain_json, render_status, render_status_json, StatusRow,
};
pub use store::{bad_artifacts, render_gc, render_verify, uploaded};

use pipeline::StoreUrl;

/// A size for a person: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// Where a store-relative path is, in a form a person can open: a file path on a local store,
/// `s3://bucket/prefix/rel` otherwise.
pub fn display_path(url: &StoreUrl, rel: &str) -> String {
    match url {
        StoreUrl::Local(p) => p.join(rel).display().to_string(),
        other => format!("{other}/{rel}"),
    }
}

/// `name count, name count` (label counts of a dataset, split sizes).
pub use ::stages::ingest::format_counts as counts;

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Fixed inputs for the snapshot tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use pipeline::ops::{GcReport, Verified};
    use pipeline::store::{ArtifactManifest, BadFile, VerifyReport};
    use pipeline::{StageKey, StoreUrl};

    /// A key made of one repeated hex digit, so snapshots show which key is which.
    pub fn key(digit: char) -> StageKey {
        StageKey::parse(&digit.to_string().repeat(64)).expect("64 hex digits")
    }

    pub fn local_store() -> StoreUrl {
        StoreUrl::Local("/data/artifacts".into())
    }

    pub fn s3_store() -> StoreUrl {
        StoreUrl::S3 {
            bucket: "lab".into(),
            prefix: "runs/one".into(),
        }
    }

    pub fn bad_file(path: &str, problem: &str) -> BadFile {
        BadFile {
            path: path.into(),
            location: format!("encode/{}/{path}", "e".repeat(64)),
            problem: problem.into(),
        }
    }

    /// A `_manifest.json` as a stage writes it, with fixed keys and times.
    pub fn manifest(params: &str) -> ArtifactManifest {
        let text = format!(
            r#"{{
  "format": 1,
  "key": "{key}",
  "kind": "command",
  "version": 1,
  "instance": "b[seed=1]",
  "manifest": "m.toml",
  "params": {params},
  "inputs": {{
    "deps": [{{"reference": "a", "key": "{upstream}"}}],
    "extra": [{{"reference": "datasets.raw", "key": "short"}}]
  }},
  "files": [
    {{"path": "o", "bytes": 14, "blake3": "{blake3}"}},
    {{"path": "tables/embeddings.parquet", "bytes": 5242880, "blake3": "{blake3}"}}
  ],
  "started_unix": 1767225600.25,
  "seconds": 1.5,
  "tool": "adaptor 0.1.0",
  "host": "node7"
}}"#,
            key = "1".repeat(64),
            upstream = "a".repeat(64),
            blake3 = "f".repeat(64),
        );
        serde_json::from_str(&text).expect("a valid _manifest.json")
    }

    pub fn gc_report() -> GcReport {
        GcReport {
            deleted: vec![
                (format!("command/{}/", "1".repeat(64)), 20 << 20),
                ("_staging/5f3a/".into(), 512),
            ],
            kept: 3,
            skipped: vec![("notes/".into(), "not a stage kind this binary knows".into())],
        }
    }

    /// A good artifact, and a bad one that was quarantined.
    pub fn verified() -> Vec<Verified> {
        vec![
            Verified {
                kind: "ingest".into(),
                key: key('0'),
                report: VerifyReport {
                    files: 3,
                    bytes: 4096,
                    bad: vec![],
                },
                quarantined: None,
            },
            Verified {
                kind: "encode".into(),
                key: key('e'),
                report: VerifyReport {
                    files: 2,
                    bytes: 3 << 20,
                    bad: vec![
                        bad_file("text.parquet", "blake3 differs from _manifest.json"),
                        bad_file("image.parquet", "missing"),
                    ],
                },
                quarantined: Some(format!("_quarantine/encode/{}", "e".repeat(64))),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_paths() {
        let sizes: Vec<String> = [0, 1023, 1024, 1536, 20 << 20, 3 << 30, u64::MAX]
            .into_iter()
            .map(human_bytes)
            .collect();
        let paths = [
            display_path(&fixtures::local_store(), "_failed/x/log.txt"),
            display_path(&fixtures::s3_store(), "_failed/x/log.txt"),
            display_path(&StoreUrl::Memory, "_failed/x/log.txt"),
        ];
        insta::assert_snapshot!(format!(
            "{}\n{}\n{}",
            sizes.join("\n"),
            paths.join("\n"),
            counts([("normal", 3), ("pneumonia", 2)])
        ));
    }
}
