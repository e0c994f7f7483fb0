//! `explain`: why an instance would (or would not) run, as lines for a person: its state, and
//! what changed since the key it was last built under (parameters, inputs, files, version).

use std::collections::{BTreeSet, HashSet};

use crate::error::Result;
use crate::executor::{Resolved, LEASE_SECS};
use crate::fingerprint::FingerprintCache;
use crate::key::{KeyRecipe, StageKey};
use crate::plan::{InputRef, Plan};
use crate::store::{ArtifactManifest, IndexEntry, Store};

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
        let bad = store
            .check_sizes(&[(inst.kind.clone(), key.clone())])?
            .remove(0);
        if !bad.is_empty() {
            lines.push(format!(
                "would run: its artifact is corrupt ({}); the next run moves it to _quarantine/ and rebuilds it",
                bad.iter()
                    .map(|f| format!("{}: {}", f.path, f.problem))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            return Ok(lines);
        }
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
    if let crate::lease::LeaseState::Live { owner, .. } =
        crate::lease::state(store, &inst.kind, key, LEASE_SECS)?
    {
        lines.push(format!("being built right now by {owner}"));
        return Ok(lines);
    }
    let entry: Option<IndexEntry> =
        store.get_json_or_stale(&Store::index_path(&plan.manifest_id, &inst.name))?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::fmt_time(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::fmt_time(1_795_000_000.0), "2026-11-18 11:06:40 UTC");
    }
}
