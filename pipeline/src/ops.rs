//! Read-side operations over a plan and a store: `explain` (why would this re-run?) and `gc`.

use std::collections::{BTreeSet, HashSet};

use crate::error::Result;
use crate::executor::{lease_is_stale, Resolved, LEASE_SECS};
use crate::fingerprint::FingerprintCache;
use crate::key::{KeyRecipe, StageKey};
use crate::plan::{InputRef, Plan};
use crate::store::{ArtifactManifest, IndexEntry, Lease, Store};

fn fmt_time(unix: f64) -> String {
    // UTC, to the second; no time-zone database needed.
    let secs = unix as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn format_unix(unix: f64) -> String {
    fmt_time(unix)
}

/// Why instance `idx` would (or would not) run, as lines for a person.
pub fn explain(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    cache: &FingerprintCache,
    idx: usize,
) -> Result<Vec<String>> {
    let inst = &plan.instances[idx];
    let key = &resolved.keys[idx];
    let mut lines = vec![format!("{} ({}) key {}", inst.name, inst.kind, key.short())];
    if let Some(m) = store.get_json::<ArtifactManifest>(&Store::manifest_path(&inst.kind, key))? {
        lines.push(format!(
            "up to date: artifact {}/{} was built {} in {:.1}s by {}",
            inst.kind,
            key.short(),
            fmt_time(m.started_unix),
            m.seconds,
            m.tool
        ));
        return Ok(lines);
    }
    if let Some(lease) = store.get_json::<Lease>(&Store::lock_path(&inst.kind, key))? {
        if !lease_is_stale(&lease, LEASE_SECS) {
            lines.push(format!("being built right now by {}", lease.owner));
            return Ok(lines);
        }
    }
    let entry: Option<IndexEntry> =
        store.get_json(&Store::index_path(&plan.manifest_id, &inst.name))?;
    let Some(entry) = entry else {
        lines.push("would run: never built from this manifest in this store (no earlier artifact to compare with)".into());
        return Ok(lines);
    };
    if entry.key == *key {
        match entry.status.as_str() {
            "failed" => lines.push(format!(
                "would run: the last attempt ({}) failed: {}\n  log: {}",
                fmt_time(entry.unix),
                entry.error.as_deref().unwrap_or("unknown error"),
                entry.log
            )),
            _ => lines.push(format!(
                "would run: the artifact built {} for this same key is gone from the store (deleted by gc?)",
                fmt_time(entry.unix)
            )),
        }
        return Ok(lines);
    }
    lines.push(format!(
        "would run: its key changed since the build of {} (key {}):",
        fmt_time(entry.unix),
        entry.key.short()
    ));
    let mut seen = HashSet::new();
    diff(
        plan, resolved, store, cache, idx, &entry.key, 1, &mut lines, &mut seen,
    )?;
    Ok(lines)
}

#[allow(clippy::too_many_arguments)]
fn diff(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    cache: &FingerprintCache,
    idx: usize,
    old_key: &StageKey,
    depth: usize,
    lines: &mut Vec<String>,
    seen: &mut HashSet<usize>,
) -> Result<()> {
    let pad = "  ".repeat(depth);
    let inst = &plan.instances[idx];
    let new = &resolved.recipes[idx];
    let Some(old_manifest) =
        store.get_json::<ArtifactManifest>(&Store::manifest_path(&inst.kind, old_key))?
    else {
        lines.push(format!(
            "{pad}(the earlier artifact {}/{} is gone from the store; cannot say more)",
            inst.kind,
            old_key.short()
        ));
        return Ok(());
    };
    let old: KeyRecipe = old_manifest.recipe();
    if old.version != new.version {
        lines.push(format!(
            "{pad}stage version of `{}` changed: {} -> {}",
            inst.kind, old.version, new.version
        ));
    }
    let names: BTreeSet<&String> = old.params.keys().chain(new.params.keys()).collect();
    for name in names {
        match (old.params.get(name), new.params.get(name)) {
            (Some(a), Some(b)) if a.canonical() != b.canonical() => {
                lines.push(format!("{pad}parameter `{name}` changed: {a} -> {b}"))
            }
            (Some(a), None) => lines.push(format!("{pad}parameter `{name}` removed (was {a})")),
            (None, Some(b)) => lines.push(format!("{pad}parameter `{name}` added: {b}")),
            _ => {}
        }
    }
    let slots: BTreeSet<&String> = old.inputs.keys().chain(new.inputs.keys()).collect();
    for slot in slots {
        let before = old.inputs.get(slot).cloned().unwrap_or_default();
        let after = new.inputs.get(slot).cloned().unwrap_or_default();
        if before == after {
            continue;
        }
        let refs = inst.inputs.get(slot).cloned().unwrap_or_default();
        if before.len() != after.len() || refs.len() != after.len() {
            lines.push(format!(
                "{pad}input `{slot}` now binds {} artifact(s), was {}",
                after.len(),
                before.len()
            ));
            continue;
        }
        let old_records = old_manifest.inputs.get(slot).cloned().unwrap_or_default();
        for (n, ((b, a), r)) in before.iter().zip(&after).zip(&refs).enumerate() {
            if b == a {
                continue;
            }
            match r {
                InputRef::External(e) => {
                    let ext = &plan.externals[*e];
                    let fp = &resolved.externals[*e];
                    let old_content = old_records.get(n).and_then(|r| r.content.clone());
                    match old_content {
                        Some(old) if old == fp.digest => lines.push(format!(
                            "{pad}input `{slot}` ({}): its kind or parameters changed, not its files",
                            ext.reference()
                        )),
                        Some(old) => {
                            lines.push(format!(
                                "{pad}input `{slot}` ({}, {}): files changed ({} files, {} bytes now)",
                                ext.reference(),
                                ext.path.display(),
                                fp.files,
                                fp.bytes
                            ));
                            if let Some(changes) = cache.changes_since(&ext.path, &old) {
                                for c in changes.iter().take(10) {
                                    lines.push(format!("{pad}  {c}"));
                                }
                                if changes.len() > 10 {
                                    lines.push(format!("{pad}  ... and {} more", changes.len() - 10));
                                }
                            }
                        }
                        None => lines.push(format!(
                            "{pad}input `{slot}` ({}, {}): content, kind or parameters changed",
                            ext.reference(),
                            ext.path.display()
                        )),
                    }
                }
                InputRef::Stage(s) => {
                    let up = &plan.instances[*s];
                    lines.push(format!(
                        "{pad}input `{slot}` ({}) changed: key {} -> {}",
                        up.name,
                        &b[..12.min(b.len())],
                        resolved.keys[*s].short()
                    ));
                    if seen.insert(*s) {
                        if let Some(old_up) = StageKey::parse(b) {
                            diff(
                                plan,
                                resolved,
                                store,
                                cache,
                                *s,
                                &old_up,
                                depth + 1,
                                lines,
                                seen,
                            )?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// What `gc` removed (or would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    /// (store-relative folder, bytes)
    pub deleted: Vec<(String, u64)>,
    pub kept: usize,
}

const RESERVED_TOP: &[&str] = &["_locks", "_failed", "_index", "_staging"];

/// Deletes every artifact (and failure record) whose (kind, key) is not in `referenced`. Keys
/// under a live lease are kept whatever the manifests say.
pub fn gc(
    store: &Store,
    referenced: &HashSet<(String, StageKey)>,
    dry_run: bool,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    for kind in store.list_dirs("")? {
        if RESERVED_TOP.contains(&kind.as_str()) {
            continue;
        }
        for key_dir in store.list_dirs(&kind)? {
            let keep = StageKey::parse(&key_dir).is_some_and(|k| {
                referenced.contains(&(kind.clone(), k.clone())) || live_lease(store, &kind, &k)
            });
            if keep {
                report.kept += 1;
                continue;
            }
            let prefix = format!("{kind}/{key_dir}");
            let bytes = if dry_run {
                store.list(&prefix)?.iter().map(|(_, s)| s).sum()
            } else {
                store.delete_prefix(&prefix)?
            };
            report.deleted.push((prefix, bytes));
        }
    }
    for kind in store.list_dirs("_failed")? {
        for key_dir in store.list_dirs(&format!("_failed/{kind}"))? {
            let keep =
                StageKey::parse(&key_dir).is_some_and(|k| referenced.contains(&(kind.clone(), k)));
            if !keep {
                let prefix = format!("_failed/{kind}/{key_dir}");
                let bytes = if dry_run {
                    store.list(&prefix)?.iter().map(|(_, s)| s).sum()
                } else {
                    store.delete_prefix(&prefix)?
                };
                report.deleted.push((prefix, bytes));
            }
        }
    }
    // Staging folders of runners that are gone (local stores only).
    if let Some(root) = store.local_root() {
        let staging = root.join("_staging");
        if let Ok(entries) = std::fs::read_dir(&staging) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // `<kind>-<short key>-<pid>-<nonce>`: the pid is the second field from the end.
                let pid: Option<u32> = name.rsplit('-').nth(1).and_then(|p| p.parse().ok());
                let alive =
                    pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let rel = format!("_staging/{name}");
                    let bytes = if dry_run {
                        0
                    } else {
                        store.delete_prefix(&rel)?
                    };
                    report.deleted.push((rel, bytes));
                }
            }
        }
    }
    Ok(report)
}

fn live_lease(store: &Store, kind: &str, key: &StageKey) -> bool {
    matches!(store.get_json::<Lease>(&Store::lock_path(kind, key)), Ok(Some(l)) if !lease_is_stale(&l, LEASE_SECS))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::fmt_time(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::fmt_time(1_795_000_000.0), "2026-11-18 11:06:40 UTC");
    }
}
