//! What `adaptor run` (and `exec`, `synth`, `ingest`) say besides the live display: the plan of
//! `run --dry-run`, the closing summary, the failures, and warnings about inputs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use pipeline::executor::State;
use pipeline::Outcome;
use pipeline::{StageKey, StoreUrl};

use super::{counts, display_path};

/// An instance `run --dry-run` would build, with its key and why (its state).
pub struct PlannedInstance<'a> {
    pub name: &'a str,
    pub key: &'a StageKey,
    pub state: &'a State,
}

/// `run --dry-run`: one line per instance that would run; when every instance is up to date
/// (`outcomes` is what the dry run decided for each), a line saying there is nothing to do.
pub fn render_dry_run(would_run: &[PlannedInstance], outcomes: &[(String, Outcome)]) -> String {
    let mut s = String::new();
    for p in would_run {
        // Only `--force` runs an up-to-date instance.
        let why = match p.state {
            State::UpToDate => "up-to-date, forced",
            other => other.label(),
        };
        let _ = writeln!(s, "would run  {}  {}  ({why})", p.key.short(), p.name);
    }
    if outcomes.iter().all(|(_, o)| *o == Outcome::UpToDate) {
        let _ = writeln!(
            s,
            "nothing to do: all {} instance(s) up to date",
            outcomes.len()
        );
    }
    s
}

/// The counts a finished run closes with.
pub struct RunSummary<'a> {
    pub ran: usize,
    pub up_to_date: usize,
    /// Failed, not run because an upstream failed, or cancelled.
    pub failed: usize,
    /// Submitted to Slurm and not followed (`--detach`).
    pub submitted: usize,
    pub seconds: f64,
    pub store: &'a StoreUrl,
    pub manifest: &'a Path,
}

/// The closing lines of `run` (on stderr, left out with `--quiet`).
pub fn render_run_summary(r: &RunSummary) -> String {
    let mut s = String::new();
    if r.submitted > 0 {
        let _ = writeln!(
            s,
            "{} submitted to Slurm; follow with `adaptor status {}`",
            r.submitted,
            r.manifest.display()
        );
    }
    let _ = writeln!(
        s,
        "{} ran, {} up to date, {} failed or not run ({:.2}s, store {})",
        r.ran, r.up_to_date, r.failed, r.seconds, r.store
    );
    s
}

/// What failed in a run, each with its log; what was not run because of it; what was cancelled.
pub fn render_failures(failed: &[(&str, &Outcome)], store: &StoreUrl) -> String {
    let mut s = String::new();
    for (name, outcome) in failed {
        match outcome {
            Outcome::Failed { error, log } => {
                let _ = writeln!(s, "error: {name} failed: {error}");
                if !log.is_empty() {
                    let _ = writeln!(s, "  log: {}", display_path(store, log));
                }
            }
            Outcome::NotRun { because } => {
                let _ = writeln!(s, "  not run: {name} (upstream {because} failed)");
            }
            Outcome::Cancelled => {
                let _ = writeln!(s, "  cancelled: {name}");
            }
            Outcome::UpToDate
            | Outcome::Ran { .. }
            | Outcome::BuiltElsewhere
            | Outcome::Submitted { .. } => {}
        }
    }
    s
}

/// `exec` (one instance in a cluster job) when its stage failed.
pub fn render_exec_failure(instance: &str, error: &str, log: &str, store: &StoreUrl) -> String {
    format!(
        "error: {instance} failed: {error}\n  log: {}\n",
        display_path(store, log)
    )
}

/// `run --verify` found files of an external input whose content changed while their size and
/// time did not (the first five are named).
pub fn render_unverified_inputs(reference: &str, files: &[String]) -> String {
    format!(
        "warning: {reference}: {} file(s) changed content where earlier runs did not look (same size and time, or not stat'ed under its `check`/`immutable`): {}\n",
        files.len(),
        files.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )
}

/// What `adaptor synth` wrote: `images` files of `image_size` pixels a side into `out`, with
/// how many images carry each label.
pub fn render_synth_summary(
    dataset: &str,
    out: &Path,
    images: usize,
    image_size: u32,
    labels: &BTreeMap<String, usize>,
) -> String {
    format!(
        "wrote {images} images of {dataset} ({image_size} px) into {}: {}\n",
        out.display(),
        counts(labels)
    )
}

/// `adaptor ingest --skip-bad` left rows out.
pub fn render_ingest_skipped(skipped: usize, out: &Path) -> String {
    format!(
        "{skipped} bad row(s) skipped: see {}\n",
        out.join("skipped.parquet").display()
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{key, local_store, s3_store};
    use super::*;

    fn outcomes() -> Vec<(String, Outcome)> {
        vec![
            ("a".into(), Outcome::UpToDate),
            ("b[seed=0]".into(), Outcome::NotRun { because: "".into() }),
            ("b[seed=1]".into(), Outcome::NotRun { because: "".into() }),
        ]
    }

    #[test]
    fn dry_run() {
        let (k0, k1) = (key('b'), key('c'));
        let previous = State::Stale {
            previous: key('a'),
            from: None,
        };
        let would_run = [
            PlannedInstance {
                name: "b[seed=0]",
                key: &k0,
                state: &previous,
            },
            PlannedInstance {
                name: "b[seed=1]",
                key: &k1,
                state: &State::Missing,
            },
        ];
        insta::assert_snapshot!(render_dry_run(&would_run, &outcomes()));
    }

    #[test]
    fn dry_run_with_nothing_to_do() {
        let outcomes = vec![
            ("a".to_string(), Outcome::UpToDate),
            ("b".to_string(), Outcome::UpToDate),
        ];
        insta::assert_snapshot!(render_dry_run(&[], &outcomes));
    }

    /// A run of manifests/demo.toml: (ran, up to date, failed, submitted), seconds.
    fn summary(store: &StoreUrl, counts: [usize; 4], seconds: f64) -> String {
        let [ran, up_to_date, failed, submitted] = counts;
        render_run_summary(&RunSummary {
            ran,
            up_to_date,
            failed,
            submitted,
            seconds,
            store,
            manifest: Path::new("manifests/demo.toml"),
        })
    }

    #[test]
    fn run_summary() {
        insta::assert_snapshot!(summary(&local_store(), [3, 5, 2, 0], 12.345));
    }

    #[test]
    fn run_summary_of_a_detached_slurm_run() {
        insta::assert_snapshot!(summary(&s3_store(), [0, 1, 0, 4], 0.5));
    }

    #[test]
    fn failures() {
        let failed = Outcome::Failed {
            error:
                "command `sh -c ...` exited with status 3: rows.csv: row 3: column label is empty"
                    .into(),
            log: "_failed/command/111/log.txt".into(),
        };
        let failed_without_log = Outcome::Failed {
            error: "timed out after 30m".into(),
            log: String::new(),
        };
        let not_run = Outcome::NotRun {
            because: "bad".into(),
        };
        let list = [
            ("bad", &failed),
            ("slow", &failed_without_log),
            ("after", &not_run),
            ("other", &Outcome::Cancelled),
        ];
        insta::assert_snapshot!(render_failures(&list, &local_store()));
    }

    #[test]
    fn exec_failure() {
        insta::assert_snapshot!(render_exec_failure(
            "encode[text=minilm]",
            "adaptor-torch was killed by signal 9 (SIGKILL)",
            "_failed/encode/222/log.txt",
            &s3_store()
        ));
    }

    #[test]
    fn unverified_inputs() {
        let files: Vec<String> = (1..=7).map(|i| format!("images/{i}.png")).collect();
        insta::assert_snapshot!(render_unverified_inputs("datasets.rsna", &files));
    }

    #[test]
    fn synth_and_ingest() {
        let labels = [("normal".to_string(), 25), ("pneumonia".to_string(), 15)]
            .into_iter()
            .collect();
        insta::assert_snapshot!(
            render_synth_summary("rsna", Path::new("raw/rsna"), 40, 64, &labels)
                + &render_ingest_skipped(2, Path::new("out/rsna"))
        );
    }
}
