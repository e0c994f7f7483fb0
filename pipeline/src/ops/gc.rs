//! `gc`: deletes what the store owns and nobody needs (unreferenced artifacts, failure records,
//! ended job records, dead staging folders and uploads), and reports what it kept and skipped.

use std::collections::HashSet;

use crate::error::Result;
use crate::key::StageKey;
use crate::store::{Record, StagingOwner, Store, UploadRecord};

/// What `gc` removed (or would remove), kept and skipped.
#[derive(Debug, Default)]
pub struct GcReport {
    /// (store-relative folder or object, bytes)
    pub deleted: Vec<(String, u64)>,
    pub kept: usize,
    /// Folders and objects gc does not own or cannot judge, with why; never deleted.
    pub skipped: Vec<(String, String)>,
}

/// The store's own bookkeeping folders (see the layout in `crate::store`).
pub const BOOKKEEPING: &[&str] = &[
    "_uploads",
    "_locks",
    "_failed",
    "_index",
    "_staging",
    "_resume",
    "_jobs",
    "_quarantine",
    "_forgotten",
    "_replaced",
];

/// What gc needs to know besides the store.
pub struct GcScope<'a> {
    /// Stage kinds this binary knows: only folders named after one hold artifacts gc may delete.
    pub kinds: &'a HashSet<String>,
    /// (kind, key) the listed manifests reference: kept, with their resume state.
    pub referenced: &'a HashSet<(String, StageKey)>,
    pub lease_secs: f64,
    /// Whether a cluster job is still queued or running: `None` if that cannot be told (then
    /// its record is kept).
    pub job_alive: &'a dyn Fn(&str) -> Option<bool>,
}

/// Deletes what the store owns and nothing else: artifact folders named by a key under a kind
/// this binary knows that no listed manifest references and no live lease holds; their failure
/// records and resume state; records of cluster jobs that ended; staging folders whose writer is
/// provably gone (same host: its pid is dead; another host: no live lease on its key and older
/// than the lease timeout). Anything else (a user's `notes/`, another tool's objects) is skipped
/// and reported. An artifact loses its `_manifest.json` first, so an interrupted gc never leaves
/// a partial folder that looks complete.
pub fn gc(store: &Store, scope: &GcScope, dry_run: bool) -> Result<GcReport> {
    let mut report = GcReport::default();
    let remove = |report: &mut GcReport, rel: String| -> Result<()> {
        let bytes = if dry_run {
            store.list(&rel)?.iter().map(|(_, s)| s).sum()
        } else {
            store.delete_prefix(&rel)?
        };
        report.deleted.push((rel, bytes));
        Ok(())
    };
    let referenced =
        |kind: &str, k: &StageKey| scope.referenced.contains(&(kind.to_string(), k.clone()));
    let (dirs, objects) = store.list_top("")?;
    for o in objects {
        report.skipped.push((
            o,
            "an object gc does not own (not in an artifact folder)".into(),
        ));
    }
    for top in dirs {
        if BOOKKEEPING.contains(&top.as_str()) {
            continue;
        }
        if !scope.kinds.contains(&top) {
            report.skipped.push((
                format!("{top}/"),
                "not a stage kind this binary knows".into(),
            ));
            continue;
        }
        let (key_dirs, objects) = store.list_top(&top)?;
        for o in objects {
            report
                .skipped
                .push((format!("{top}/{o}"), "not an artifact folder".into()));
        }
        for key_dir in key_dirs {
            let Some(k) = StageKey::parse(&key_dir) else {
                report
                    .skipped
                    .push((format!("{top}/{key_dir}/"), "not named by a key".into()));
                continue;
            };
            if live_lease(store, &top, &k, scope.lease_secs) {
                report.kept += 1;
                continue;
            }
            if referenced(&top, &k) {
                report.kept += 1;
                // Remote: attempt folders of runners that died mid-upload or lost the race.
                for rel in orphan_attempts(store, &top, &k, scope.lease_secs)? {
                    remove(&mut report, rel)?;
                }
                continue;
            }
            remove(&mut report, format!("{top}/{key_dir}"))?;
        }
    }
    // Failure records and resume state: `<bookkeeping>/<kind>/<key>/`.
    for book in ["_failed", "_resume"] {
        let (kinds, _) = store.list_top(book)?;
        for kind in kinds {
            let (key_dirs, _) = store.list_top(&format!("{book}/{kind}"))?;
            for key_dir in key_dirs {
                let rel = format!("{book}/{kind}/{key_dir}");
                let Some(k) = StageKey::parse(&key_dir) else {
                    report
                        .skipped
                        .push((rel + "/", "not named by a key".into()));
                    continue;
                };
                if referenced(&kind, &k) || live_lease(store, &kind, &k, scope.lease_secs) {
                    continue;
                }
                remove(&mut report, rel)?;
            }
        }
    }
    // Artifacts a forced rebuild replaced (local stores), `<kind>/<key>-<unix>-<token>`: kept
    // one lease timeout after they were replaced, for readers still in them.
    let (kinds, _) = store.list_top("_replaced")?;
    for kind in kinds {
        let (folders, _) = store.list_top(&format!("_replaced/{kind}"))?;
        for folder in folders {
            let rel = format!("_replaced/{kind}/{folder}");
            match folder.split('-').nth(1).and_then(|t| t.parse::<f64>().ok()) {
                Some(t) if store.now()? - t > scope.lease_secs => remove(&mut report, rel)?,
                Some(_) => {}
                None => report
                    .skipped
                    .push((rel + "/", "not named <key>-<unix>-<token>".into())),
            }
        }
    }
    // Job records of cluster jobs: kept while the job is queued or running.
    for (rel, _) in store.list("_jobs")? {
        let key = rel
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(StageKey::parse);
        let kind = rel.split('/').nth(1).unwrap_or_default().to_string();
        let Some(key) = key else {
            report
                .skipped
                .push((rel, "not a job record (not named by a key)".into()));
            continue;
        };
        if referenced(&kind, &key) {
            continue;
        }
        let alive = match store.get_record::<crate::executor::jobs::JobRecord>(&rel)? {
            Record::Absent => continue,
            Record::Found { value, .. } if !value.job_id.is_empty() => {
                match (scope.job_alive)(&value.job_id) {
                    Some(a) => a,
                    None => {
                        report.skipped.push((
                            rel,
                            format!("cannot tell whether job {} still runs", value.job_id),
                        ));
                        continue;
                    }
                }
            }
            // A claim without a job id, or an unreadable record: gone after the lease timeout.
            Record::Found { modified_unix, .. } | Record::Corrupt { modified_unix, .. } => {
                store.now()? - modified_unix <= scope.lease_secs
            }
        };
        if !alive {
            remove(&mut report, rel)?;
        }
    }
    // Multipart uploads of runners that are gone (`_uploads/`, remote stores): aborted once
    // the record is older than the lease timeout and no live lease holds the key uploaded to.
    let mut recorded_uploads = HashSet::new();
    for (rel, _) in store.list("_uploads")? {
        let (record, modified) = match store.get_record::<UploadRecord>(&rel)? {
            Record::Absent => continue,
            Record::Found {
                value,
                modified_unix,
                ..
            } => (Some(value), modified_unix),
            Record::Corrupt { modified_unix, .. } => (None, modified_unix),
        };
        if let Some(r) = &record {
            recorded_uploads.insert(r.upload_id.clone());
        }
        if store.now()? - modified <= scope.lease_secs {
            continue;
        }
        if let Some(r) = &record {
            let mut parts = r.path.split('/');
            let mut kind = parts.next().unwrap_or_default();
            if kind == "_failed" {
                kind = parts.next().unwrap_or_default();
            }
            let key = parts.next().and_then(StageKey::parse);
            if key.is_some_and(|k| live_lease(store, kind, &k, scope.lease_secs)) {
                continue;
            }
            if !dry_run {
                store.abort_upload(r)?;
            }
        }
        if !dry_run {
            store.delete(&rel)?;
        }
        report.deleted.push((rel, 0));
    }
    // Uploads in progress that no record names (a runner killed between starting an upload and
    // recording it), listed from S3 itself: aborted under the same rule when they are inside an
    // artifact folder this store owns; any other upload is not ours and is only reported. A
    // listing that fails (no `s3:ListBucketMultipartUploads` permission, say) is reported, and
    // gc goes on with what the records told it.
    let pending = match store.pending_uploads() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.skipped.push((
                "multipart uploads in progress".into(),
                format!("could not be listed: {e}"),
            ));
            Vec::new()
        }
    };
    {
        for u in pending {
            if recorded_uploads.contains(&u.upload_id) {
                continue;
            }
            let label = format!(
                "multipart upload {} of {}",
                u.upload_id.chars().take(12).collect::<String>(),
                u.key
            );
            let mut parts = u.key.split('/');
            let mut kind = parts.next().unwrap_or_default();
            if kind == "_failed" {
                kind = parts.next().unwrap_or_default();
            }
            let Some(key) = parts
                .next()
                .and_then(StageKey::parse)
                .filter(|_| scope.kinds.contains(kind))
            else {
                report.skipped.push((
                    label,
                    "a multipart upload gc does not own (not in an artifact folder)".into(),
                ));
                continue;
            };
            if store.now()? - u.initiated_unix <= scope.lease_secs
                || live_lease(store, kind, &key, scope.lease_secs)
            {
                continue;
            }
            if !dry_run {
                store.abort_upload(&UploadRecord {
                    path: u.key.clone(),
                    upload_id: u.upload_id.clone(),
                })?;
            }
            report.deleted.push((label, 0));
        }
    }
    // Staging folders of runners that are provably gone (local stores only).
    if let Some(root) = store.local_root() {
        let staging = root.join("_staging");
        let me = crate::lease::host_id();
        if let Ok(entries) = std::fs::read_dir(&staging) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = format!("_staging/{name}");
                let owner: Option<StagingOwner> = std::fs::read(e.path().join("owner.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let age = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(f64::INFINITY, |d| {
                        store.now().unwrap_or(0.0) - d.as_secs_f64()
                    });
                let gone = match &owner {
                    Some(o) if o.host_id == me => !crate::lease::pid_alive(o.pid),
                    Some(o) => {
                        !live_lease(store, &o.kind, &o.key, scope.lease_secs)
                            && age > scope.lease_secs
                    }
                    None => age > scope.lease_secs,
                };
                if gone {
                    remove(&mut report, rel)?;
                } else if owner.as_ref().is_some_and(|o| o.host_id != me) {
                    report.skipped.push((
                        rel,
                        "written from another host; kept until its lease times out".into(),
                    ));
                }
            }
        }
    }
    Ok(report)
}

/// On a remote store: the `<kind>/<key>/_attempt-*` folders the committed manifest does not name
/// (all of them when nothing is committed) whose every object is older than the lease timeout.
/// Call only when no live lease holds the key.
fn orphan_attempts(
    store: &Store,
    kind: &str,
    key: &StageKey,
    lease_secs: f64,
) -> Result<Vec<String>> {
    if store.local_root().is_some() {
        return Ok(Vec::new());
    }
    let dir = Store::artifact_dir(kind, key);
    let committed = match store.read_manifest(kind, key) {
        Ok(m) => m.and_then(|m| m.attempt),
        // A bad manifest: leave the folder to `verify --quarantine` / `run`.
        Err(_) => return Ok(Vec::new()),
    };
    let now = store.now()?;
    let mut newest: std::collections::BTreeMap<String, f64> = Default::default();
    for (rel, modified) in store.list_modified(&dir)? {
        let Some(attempt) = rel
            .strip_prefix(&format!("{dir}/"))
            .and_then(|r| r.split_once('/'))
            .map(|(a, _)| a)
            .filter(|a| a.starts_with("_attempt-"))
        else {
            continue;
        };
        if committed.as_deref() == Some(attempt) {
            continue;
        }
        let e = newest.entry(format!("{dir}/{attempt}")).or_insert(0.0);
        *e = e.max(modified);
    }
    Ok(newest
        .into_iter()
        .filter(|(_, m)| now - m > lease_secs)
        .map(|(p, _)| p)
        .collect())
}

fn live_lease(store: &Store, kind: &str, key: &StageKey, lease_secs: f64) -> bool {
    // An error reading the lease keeps the artifact: gc never deletes on a guess.
    !matches!(
        crate::lease::state(store, kind, key, lease_secs),
        Ok(crate::lease::LeaseState::Free | crate::lease::LeaseState::Stale { .. })
    )
}
