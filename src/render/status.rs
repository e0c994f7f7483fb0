//! `adaptor status` (a table, or JSON with `--json`) and `adaptor explain`: where each stage
//! instance of a manifest stands in a store, and why one would run.

use std::fmt::Write as _;
use std::time::Duration;

use pipeline::executor::State;
use pipeline::ops::{ChangeKind, Explanation};
use pipeline::{StageKey, StoreUrl};

use super::{display_path, first_line};

/// One stage instance of a manifest and its state in the store.
pub struct StatusRow<'a> {
    pub instance: &'a str,
    pub kind: &'a str,
    pub key: &'a StageKey,
    pub state: &'a State,
}

/// One line per instance (`label  key  name  (detail)`), then how many are up to date.
pub fn render_status(rows: &[StatusRow]) -> String {
    let mut s = String::new();
    for row in rows {
        let detail = match row.state {
            State::Failed { error, .. } => format!("  ({})", first_line(error)),
            State::Running {
                owner,
                silent: None,
            } => format!("  (by {owner})"),
            State::Running {
                owner,
                silent: Some(secs),
            } => format!(
                "  (by {owner}; silent for {}: no progress or log line)",
                pipeline::stage::format_duration(Duration::from_secs(secs.max(0.0) as u64))
            ),
            State::Queued { job } => format!("  (slurm job {job})"),
            State::Stale {
                previous,
                from: None,
            } => format!("  (was {})", previous.short()),
            State::Stale {
                previous,
                from: Some(m),
            } => format!("  (was {}, built from {m})", previous.short()),
            State::Corrupt { bad } => format!(
                "  ({})",
                bad.iter()
                    .map(|f| format!("{}: {}", f.path, f.problem))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            State::UpToDate | State::Missing => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<10}  {}  {}{detail}",
            row.state.label(),
            row.key.short(),
            row.instance
        );
    }
    let up = rows.iter().filter(|r| *r.state == State::UpToDate).count();
    if up == rows.len() {
        let _ = writeln!(s, "all {} instance(s) up to date", rows.len());
    } else {
        let _ = writeln!(s, "{up} of {} instance(s) up to date", rows.len());
    }
    s
}

/// `status --json`: an array of objects (instance, kind, state, key, and what the state carries),
/// with a trailing newline. Logs are named where a person can open them in `store`.
pub fn render_status_json(rows: &[StatusRow], store: &StoreUrl) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut row = serde_json::json!({
                "instance": r.instance, "kind": r.kind, "state": r.state.label(), "key": r.key.as_str(),
            });
            match r.state {
                State::Stale { previous, from } => {
                    row["previous_key"] = previous.as_str().into();
                    if let Some(m) = from {
                        row["previous_manifest"] = m.as_str().into();
                    }
                }
                State::Failed { error, log } => {
                    row["error"] = error.as_str().into();
                    row["log"] = display_path(store, log).into();
                }
                State::Running { owner, silent } => {
                    row["owner"] = owner.as_str().into();
                    if let Some(s) = silent {
                        row["silent_secs"] = (s.round() as u64).into();
                    }
                }
                State::Queued { job } => row["job"] = job.as_str().into(),
                State::Corrupt { bad } => {
                    row["bad_files"] = bad
                        .iter()
                        .map(|f| serde_json::json!({"path": f.path, "problem": f.problem}))
                        .collect::<Vec<_>>()
                        .into()
                }
                State::UpToDate | State::Missing => {}
            }
            row
        })
        .collect();
    serde_json::to_string_pretty(&rows).expect("JSON values serialise") + "\n"
}

/// `adaptor explain`: the lines `pipeline::ops::explain` found, one per line.
pub fn render_explain(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// `explain --json`: the instance, its verdict, what it was compared with and each change
/// found (parameters with their old and new values), then the lines a person reads.
pub fn render_explain_json(x: &Explanation) -> String {
    let changes: Vec<serde_json::Value> = x
        .changes
        .iter()
        .map(|c| {
            let mut v = serde_json::json!({
                "depth": c.depth, "instance": c.instance, "text": c.text,
            });
            match &c.what {
                ChangeKind::Version { from, to } => {
                    v["change"] = "version".into();
                    v["from"] = (*from).into();
                    v["to"] = (*to).into();
                }
                ChangeKind::Parameter(p) => {
                    v["change"] = "parameter".into();
                    v["name"] = p.name.as_str().into();
                    v["from"] = p.from.clone().into();
                    v["to"] = p.to.clone().into();
                }
                ChangeKind::Input { slot } => {
                    v["change"] = "input".into();
                    v["slot"] = slot.as_str().into();
                }
                ChangeKind::Note => v["change"] = "note".into(),
            }
            v
        })
        .collect();
    let doc = serde_json::json!({
        "instance": x.instance, "kind": x.kind, "key": x.key.as_str(), "verdict": x.verdict,
        "compared_with": x.baseline.as_ref().map(|b| serde_json::json!({
            "manifest": b.manifest, "same_manifest": b.same_manifest, "key": b.key.as_str(),
            "built_unix": b.unix,
        })),
        "changes": changes,
        "lines": x.lines,
    });
    serde_json::to_string_pretty(&doc).expect("serialisable") + "\n"
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{bad_file, key, local_store};
    use super::*;

    /// Every state once, in manifest order.
    fn states() -> Vec<Instance> {
        vec![
            ("ingest", "ingest", key('0'), State::UpToDate),
            (
                "encode[text=minilm]",
                "encode",
                key('1'),
                State::Stale {
                    previous: key('a'),
                    from: None,
                },
            ),
            ("encode[text=bert]", "encode", key('2'), State::Missing),
            (
                "pretrain",
                "pretrain",
                key('3'),
                State::Failed {
                    error: "command `train` exited with status 3: loss is NaN\nat epoch 2".into(),
                    log: "_failed/pretrain/333/log.txt".into(),
                },
            ),
            (
                "classify[fraction=0.1]",
                "classify",
                key('4'),
                State::Running {
                    owner: "node7:4242".into(),
                    silent: None,
                },
            ),
            (
                "classify[fraction=1]",
                "classify",
                key('5'),
                State::Running {
                    owner: "node8:77".into(),
                    silent: Some(754.6),
                },
            ),
            (
                "segment",
                "segment",
                key('6'),
                State::Queued {
                    job: "1234_5".into(),
                },
            ),
            (
                "report",
                "report",
                key('7'),
                State::Corrupt {
                    bad: vec![
                        bad_file("report.md", "missing"),
                        bad_file("plot.png", "size 10 bytes, expected 2048"),
                    ],
                },
            ),
        ]
    }

    type Instance = (&'static str, &'static str, StageKey, State);

    fn rows(states: &[Instance]) -> Vec<StatusRow<'_>> {
        states
            .iter()
            .map(|(instance, kind, key, state)| StatusRow {
                instance,
                kind,
                key,
                state,
            })
            .collect()
    }

    #[test]
    fn status_table() {
        insta::assert_snapshot!(render_status(&rows(&states())));
    }

    #[test]
    fn status_table_all_up_to_date() {
        let states: Vec<_> = states().into_iter().take(1).collect();
        insta::assert_snapshot!(render_status(&rows(&states)));
    }

    #[test]
    fn status_json() {
        insta::assert_snapshot!(render_status_json(&rows(&states()), &local_store()));
    }

    #[test]
    fn status_of_a_copied_manifest_names_the_other_manifest() {
        let stale = State::Stale {
            previous: key('a'),
            from: Some("demo.toml".into()),
        };
        let k = key('b');
        let rows = [StatusRow {
            instance: "classify[fraction=1.0,seed=0]",
            kind: "classify",
            key: &k,
            state: &stale,
        }];
        insta::assert_snapshot!(render_status(&rows));
        let json: serde_json::Value =
            serde_json::from_str(&render_status_json(&rows, &local_store())).unwrap();
        assert_eq!(json[0]["previous_manifest"], "demo.toml");
    }

    #[test]
    fn explain_json() {
        use pipeline::ops::{Baseline, Change, ParamChange};
        let x = Explanation {
            instance: "classify[fraction=1.0,seed=0]".into(),
            kind: "classify".into(),
            key: key('b'),
            verdict: "changed",
            baseline: Some(Baseline {
                manifest: "demo.toml".into(),
                same_manifest: false,
                key: key('a'),
                unix: Some(1_795_000_000.0),
            }),
            changes: vec![Change {
                depth: 1,
                instance: "classify[fraction=1.0,seed=0]".into(),
                what: ChangeKind::Parameter(ParamChange {
                    name: "lr".into(),
                    from: Some("0.001".into()),
                    to: Some("0.002".into()),
                }),
                text: "parameter `lr` changed: 0.001 -> 0.002".into(),
            }],
            lines: vec![
                "classify[fraction=1.0,seed=0] (classify) key bbbbbbbbbbbb".into(),
                "would run: never built from this manifest in this store; the last build of `classify[fraction=1.0,seed=0]` was from demo.toml (2026-11-18 11:06:40 UTC, key aaaaaaaaaaaa), and its key differs:".into(),
                "  parameter `lr` changed: 0.001 -> 0.002".into(),
            ],
        };
        insta::assert_snapshot!(render_explain_json(&x));
    }

    #[test]
    fn explain() {
        let lines = [
            "b[seed=1] (command) key 111111111111".to_string(),
            "would run: parameter `run` changed: \"echo $VAR_SEED >> $OUT/o\" -> \"echo seed=$VAR_SEED >> $OUT/o\"".to_string(),
            "  input `deps` (datasets.raw): changed notes.txt, added new.txt".to_string(),
        ];
        insta::assert_snapshot!(render_explain(&lines));
    }
}
