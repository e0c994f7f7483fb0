//! `adaptor path` (where an instance's current artifact is, or why there is none), `adaptor pull`
//! (what was copied where) and `adaptor forget` (what was dropped from the run index).

use std::fmt::Write as _;
use std::path::Path;

use pipeline::executor::State;
use pipeline::ops::Forgotten;
use pipeline::store::CopyOutcome;
use pipeline::{StageKey, StoreUrl};

use super::{display_path, first_line, human_bytes};

/// One instance as `path` and `pull` see it.
pub struct Located<'a> {
    pub instance: &'a str,
    pub kind: &'a str,
    pub key: &'a StageKey,
    pub state: &'a State,
    /// Where its artifact (or the file asked for) is; `None` unless it is up to date.
    pub path: Option<String>,
}

/// `adaptor path`: the path alone, for `$(adaptor path ...)`.
pub fn render_path(l: &Located) -> String {
    format!("{}\n", l.path.as_deref().unwrap_or(""))
}

/// `adaptor path --json`.
pub fn render_path_json(l: &Located, store: &StoreUrl) -> String {
    let v = serde_json::json!({
        "instance": l.instance, "kind": l.kind, "key": l.key.as_str(), "state": l.state.label(),
        "path": l.path, "store": store.to_string(),
    });
    serde_json::to_string_pretty(&v).expect("JSON values serialise") + "\n"
}

/// Why an instance has no current artifact, and what to do about it (`path` prints it to stderr
/// and exits 1).
pub fn render_not_current(l: &Located, manifest: &Path, store: &StoreUrl) -> String {
    let (name, m) = (l.instance, manifest.display());
    let why = match l.state {
        State::UpToDate => return String::new(),
        State::Missing => format!(
            "is missing: no artifact of its key {} in {store} (never built from this manifest, \
             or forgotten); `adaptor run {m}` builds it",
            l.key.short()
        ),
        State::Stale { previous, .. } => format!(
            "is stale: the last artifact this manifest built ({}) has another key than the \
             current {}; `adaptor explain {m} '{name}'` says what changed, `adaptor run {m}` \
             rebuilds it",
            previous.short(),
            l.key.short()
        ),
        State::Failed { error, log } => format!(
            "failed at its current key {}: {}; log: {}",
            l.key.short(),
            first_line(error),
            display_path(store, log)
        ),
        State::Running { owner, .. } => {
            format!("is being built by {owner}; its artifact is not complete yet")
        }
        State::Queued { job } => format!("is queued as slurm job {job}; not built yet"),
        State::Corrupt { bad } => format!(
            "is corrupt ({} bad file(s), first {}: {}); `adaptor run {m}` moves it aside and \
             rebuilds it",
            bad.len(),
            bad.first().map_or("", |b| b.path.as_str()),
            bad.first().map_or("", |b| b.problem.as_str())
        ),
    };
    format!("{name} {why}\n")
}

/// One instance of a `pull`: what became of it (`None`: not up to date, not pulled).
pub struct Pulled<'a> {
    pub located: Located<'a>,
    pub outcome: Option<CopyOutcome>,
}

/// `adaptor pull`: a line per instance, then the totals.
pub fn render_pull(rows: &[Pulled], to: &Path, linked: bool) -> String {
    let mut s = String::new();
    let verb = if linked { "linked" } else { "copied" };
    for r in rows {
        let l = &r.located;
        let what = format!("{}/{}", l.kind, l.key.short());
        let _ = match &r.outcome {
            Some(CopyOutcome::Copied { files, bytes }) => writeln!(
                s,
                "{verb:<8} {what}  {}  ({files} file(s), {})",
                l.instance,
                human_bytes(*bytes)
            ),
            Some(CopyOutcome::AlreadyThere { files, .. }) => writeln!(
                s,
                "present  {what}  {}  ({files} file(s), already there)",
                l.instance
            ),
            None => writeln!(
                s,
                "skipped  {what}  {}  ({}: no current artifact)",
                l.instance,
                l.state.label()
            ),
        };
    }
    let t = PullTotals::of(rows);
    let _ = write!(
        s,
        "pulled {} artifact(s) into {}: {} {verb} ({} file(s), {}), {} already there",
        t.copied + t.present,
        to.display(),
        t.copied,
        t.files,
        human_bytes(t.bytes),
        t.present
    );
    if t.skipped > 0 {
        let _ = write!(s, "; {} not pulled (not up to date)", t.skipped);
    }
    s.push('\n');
    s
}

/// `adaptor pull --json`.
pub fn render_pull_json(rows: &[Pulled], to: &Path) -> String {
    let artifacts: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let l = &r.located;
            let (outcome, files, bytes) = match &r.outcome {
                Some(CopyOutcome::Copied { files, bytes }) => ("copied", *files, *bytes),
                Some(CopyOutcome::AlreadyThere { files, bytes }) => ("present", *files, *bytes),
                None => ("skipped", 0, 0),
            };
            serde_json::json!({
                "instance": l.instance, "kind": l.kind, "key": l.key.as_str(),
                "state": l.state.label(), "outcome": outcome, "files": files, "bytes": bytes,
                "path": l.path,
            })
        })
        .collect();
    let t = PullTotals::of(rows);
    let v = serde_json::json!({
        "to": to.display().to_string(), "artifacts": artifacts, "copied": t.copied,
        "present": t.present, "skipped": t.skipped, "files": t.files, "bytes": t.bytes,
    });
    serde_json::to_string_pretty(&v).expect("JSON values serialise") + "\n"
}

/// What a pull did in all: artifacts copied, already there, skipped; files and bytes copied.
pub struct PullTotals {
    pub copied: usize,
    pub present: usize,
    pub skipped: usize,
    pub files: usize,
    pub bytes: u64,
}

impl PullTotals {
    pub fn of(rows: &[Pulled]) -> PullTotals {
        let mut t = PullTotals {
            copied: 0,
            present: 0,
            skipped: 0,
            files: 0,
            bytes: 0,
        };
        for r in rows {
            match &r.outcome {
                Some(CopyOutcome::Copied { files, bytes }) => {
                    t.copied += 1;
                    t.files += files;
                    t.bytes += bytes;
                }
                Some(CopyOutcome::AlreadyThere { .. }) => t.present += 1,
                None => t.skipped += 1,
            }
        }
        t
    }
}

/// `adaptor forget`: a line per instance, then what happens next.
pub fn render_forget(forgotten: &[Forgotten], manifest: &Path) -> String {
    let mut s = String::new();
    for f in forgotten {
        let kept = if f.artifact_kept {
            format!(
                "; its artifact {}/{} stays in the store",
                f.kind,
                f.key.short()
            )
        } else {
            String::new()
        };
        let _ = writeln!(s, "forgot {}  (was {}{kept})", f.instance, f.was);
    }
    let _ = writeln!(
        s,
        "forgot {} instance(s) of {}: `status` shows them missing and the next run rebuilds them. \
         Their artifacts stay in the store until a run replaces them (or gc removes them once no \
         manifest references them).",
        forgotten.len(),
        manifest.display()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{bad_file, key, local_store, s3_store};
    use super::*;

    fn located<'a>(instance: &'a str, key: &'a StageKey, state: &'a State) -> Located<'a> {
        Located {
            instance,
            kind: "command",
            key,
            state,
            path: matches!(state, State::UpToDate)
                .then(|| display_path(&s3_store(), &format!("command/{key}/_attempt-1/o.txt"))),
        }
    }

    #[test]
    fn path_and_its_json() {
        let (k, up) = (key('1'), State::UpToDate);
        let l = located("b[seed=1]", &k, &up);
        insta::assert_snapshot!(render_path(&l) + &render_path_json(&l, &s3_store()));
    }

    #[test]
    fn path_of_an_instance_without_a_current_artifact() {
        let k = key('2');
        let states = [
            State::Missing,
            State::Stale {
                previous: key('a'),
                from: None,
            },
            State::Failed {
                error: "command `false` exited with status 1\nmore".into(),
                log: format!("_failed/command/{}/_log.txt", "2".repeat(64)),
            },
            State::Running {
                owner: "node7:4242".into(),
                silent: None,
            },
            State::Queued { job: "77".into() },
            State::Corrupt {
                bad: vec![bad_file("o.txt", "missing")],
            },
        ];
        let text: String = states
            .iter()
            .map(|st| {
                render_not_current(&located("b", &k, st), Path::new("m.toml"), &local_store())
            })
            .collect();
        insta::assert_snapshot!(text);
    }

    #[test]
    fn pull_and_its_json() {
        let (k1, k2, k3) = (key('1'), key('2'), key('3'));
        let (up, stale) = (
            State::UpToDate,
            State::Stale {
                previous: key('a'),
                from: None,
            },
        );
        let rows = vec![
            Pulled {
                located: located("a", &k1, &up),
                outcome: Some(CopyOutcome::Copied {
                    files: 2,
                    bytes: 3 << 20,
                }),
            },
            Pulled {
                located: located("b", &k2, &up),
                outcome: Some(CopyOutcome::AlreadyThere {
                    files: 1,
                    bytes: 10,
                }),
            },
            Pulled {
                located: located("c", &k3, &stale),
                outcome: None,
            },
        ];
        let to = Path::new("/tmp/results");
        insta::assert_snapshot!(render_pull(&rows, to, false) + &render_pull_json(&rows, to));
    }

    #[test]
    fn forget() {
        let forgotten = vec![
            Forgotten {
                instance: "a".into(),
                kind: "command".into(),
                key: key('1'),
                was: "up-to-date",
                artifact_kept: true,
            },
            Forgotten {
                instance: "b".into(),
                kind: "command".into(),
                key: key('2'),
                was: "stale",
                artifact_kept: false,
            },
        ];
        insta::assert_snapshot!(render_forget(&forgotten, Path::new("m.toml")));
    }
}
