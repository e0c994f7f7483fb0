//! `explain`: why an instance would (or would not) run, as lines for a person: its state, and
//! what changed since the key it was last built under (parameters, inputs, files, version).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::compare::{param_changes, rebindings, ParamChange, Rebinding};
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

/// What `explain` compares an instance with.
pub enum Against<'a> {
    /// Its last build in the store: from this manifest, else from any other manifest.
    LastBuild,
    /// The instance of the same name in another plan (`--against OTHER_MANIFEST`).
    Plan {
        plan: &'a Plan,
        resolved: &'a Resolved,
    },
}

/// The build (or other manifest's instance) an explanation compares with.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// The manifest it comes from, as given on its command line.
    pub manifest: String,
    /// Whether that is the manifest being explained (its own run index).
    pub same_manifest: bool,
    pub key: StageKey,
    /// When it was built (`None` for `--against`: a plan, not a build).
    pub unix: Option<f64>,
}

/// One difference found, at `depth` (1: the instance itself, 2: an input of it, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub depth: usize,
    /// The instance whose recipe differs.
    pub instance: String,
    pub what: ChangeKind,
    /// The line a person reads (without indentation).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    Version {
        from: u32,
        to: u32,
    },
    Parameter(ParamChange),
    Input {
        slot: String,
    },
    /// Something said about the comparison (an earlier artifact gone from the store).
    Note,
}

/// Why an instance would (or would not) run.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub instance: String,
    pub kind: String,
    pub key: StageKey,
    /// `up-to-date`, `corrupt`, `running`, `never-built`, `failed`, `gone` (built for this key,
    /// since deleted), `changed`, or with `--against`: `same-key`, `not-in-other`.
    pub verdict: &'static str,
    pub baseline: Option<Baseline>,
    pub changes: Vec<Change>,
    /// Everything above, as lines for a person.
    pub lines: Vec<String>,
}

/// Why instance `idx` would (or would not) run, compared with `against`.
pub fn explain(
    plan: &Plan,
    resolved: &Resolved,
    store: &Store,
    cache: &FingerprintCache,
    idx: usize,
    against: &Against,
) -> Result<Explanation> {
    let inst = &plan.instances[idx];
    let key = &resolved.keys[idx];
    let mut x = Explanation {
        instance: inst.name.clone(),
        kind: inst.kind.clone(),
        key: key.clone(),
        verdict: "",
        baseline: None,
        changes: Vec::new(),
        lines: vec![format!("{} ({}) key {}", inst.name, inst.kind, key.short())],
    };
    if let Against::Plan {
        plan: other,
        resolved: r_other,
    } = against
    {
        let label = other.manifest.display().to_string();
        let Some(j) = other.instance(&inst.name) else {
            x.verdict = "not-in-other";
            x.lines
                .push(format!("{label} has no instance named `{}`", inst.name));
            return Ok(x);
        };
        x.baseline = Some(Baseline {
            manifest: label.clone(),
            same_manifest: false,
            key: r_other.keys[j].clone(),
            unix: None,
        });
        if r_other.keys[j] == *key {
            x.verdict = "same-key";
            x.lines
                .push(format!("same key in {label}: nothing differs"));
            return Ok(x);
        }
        x.verdict = "changed";
        x.lines.push(format!(
            "its key differs from {label}'s (key {}):",
            r_other.keys[j].short()
        ));
        let old = Old::plan(other, r_other);
        Diff::start(plan, resolved, &old, cache, &mut x).diff(idx, &r_other.keys[j], 1)?;
        return Ok(x);
    }
    if let Some(m) = store.get_json::<ArtifactManifest>(&Store::manifest_path(&inst.kind, key))? {
        let bad = store
            .check_sizes(&[(inst.kind.clone(), key.clone())])?
            .remove(0);
        if !bad.is_empty() {
            x.verdict = "corrupt";
            x.lines.push(format!(
                "would run: its artifact is corrupt ({}); the next run moves it to _quarantine/ and rebuilds it",
                bad.iter()
                    .map(|f| format!("{}: {}", f.path, f.problem))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            return Ok(x);
        }
        x.verdict = "up-to-date";
        x.lines.push(format!(
            "up to date: artifact {}/{} was built {} in {:.1}s by {}",
            inst.kind,
            key.short(),
            fmt_time(m.started_unix),
            m.seconds,
            m.tool
        ));
        return Ok(x);
    }
    if let crate::lease::LeaseState::Live { owner, .. } =
        crate::lease::state(store, &inst.kind, key, LEASE_SECS)?
    {
        x.verdict = "running";
        x.lines.push(format!("being built right now by {owner}"));
        return Ok(x);
    }
    let own: Option<IndexEntry> =
        store.get_json_or_stale(&Store::index_path(&plan.manifest_id, &inst.name))?;
    let (entry, manifest, same_manifest) = match own {
        Some(e) => (e, plan.manifest.display().to_string(), true),
        None => {
            let catalog = store.index_catalog()?;
            match store.last_build_elsewhere(&catalog, &inst.name, &plan.manifest_id)? {
                Some(f) => (f.entry, f.manifest, false),
                None => {
                    x.verdict = "never-built";
                    x.lines.push("would run: never built from this manifest in this store, nor from any other (no earlier artifact to compare with)".into());
                    return Ok(x);
                }
            }
        }
    };
    x.baseline = Some(Baseline {
        manifest: manifest.clone(),
        same_manifest,
        key: entry.key.clone(),
        unix: Some(entry.unix),
    });
    let whose = if same_manifest {
        String::new()
    } else {
        format!(
            "never built from this manifest in this store; the last build of `{}` was from {manifest}",
            inst.name
        )
    };
    if entry.key == *key {
        match entry.status.as_str() {
            "failed" => {
                x.verdict = "failed";
                x.lines.push(format!(
                    "would run: the last attempt ({}) failed: {}\n  log: {}",
                    fmt_time(entry.unix),
                    entry.error.as_deref().unwrap_or("unknown error"),
                    entry.log
                ))
            }
            _ => {
                x.verdict = "gone";
                x.lines.push(format!(
                    "would run: {}the artifact built {} for this same key is gone from the store (deleted by gc?)",
                    if same_manifest { String::new() } else { format!("{whose}; ") },
                    fmt_time(entry.unix)
                ))
            }
        }
        return Ok(x);
    }
    x.verdict = "changed";
    x.lines.push(if same_manifest {
        format!(
            "would run: its key changed since the build of {} (key {}):",
            fmt_time(entry.unix),
            entry.key.short()
        )
    } else {
        format!(
            "would run: {whose} ({}, key {}), and its key differs:",
            fmt_time(entry.unix),
            entry.key.short()
        )
    });
    Diff::start(plan, resolved, &Old::Store(store), cache, &mut x).diff(idx, &entry.key, 1)?;
    Ok(x)
}

/// Where the recipe of an earlier key comes from: the store (the artifact's `_manifest.json`) or
/// another plan (the instance with that key).
enum Old<'a> {
    Store(&'a Store),
    Plan {
        plan: &'a Plan,
        resolved: &'a Resolved,
        by_key: HashMap<&'a StageKey, usize>,
    },
}

/// An earlier recipe, with the content digest of each external input it bound (per slot).
type OldRecipe = (KeyRecipe, BTreeMap<String, Vec<Option<String>>>);

impl<'a> Old<'a> {
    fn plan(plan: &'a Plan, resolved: &'a Resolved) -> Self {
        Old::Plan {
            plan,
            resolved,
            by_key: resolved
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k, i))
                .collect(),
        }
    }

    fn recipe(&self, kind: &str, key: &StageKey) -> Result<Option<OldRecipe>> {
        match self {
            Old::Store(store) => Ok(store
                .get_json::<ArtifactManifest>(&Store::manifest_path(kind, key))?
                .map(|m| {
                    let contents = m
                        .inputs
                        .iter()
                        .map(|(slot, rs)| {
                            (slot.clone(), rs.iter().map(|r| r.content.clone()).collect())
                        })
                        .collect();
                    (m.recipe(), contents)
                })),
            Old::Plan {
                plan,
                resolved,
                by_key,
            } => Ok(by_key.get(key).map(|&i| {
                let contents = plan.instances[i]
                    .inputs
                    .iter()
                    .map(|(slot, refs)| {
                        let c = refs
                            .iter()
                            .map(|r| match r {
                                InputRef::External(e) => {
                                    Some(resolved.externals[*e].digest.clone())
                                }
                                InputRef::Stage(_) => None,
                            })
                            .collect();
                        (slot.clone(), c)
                    })
                    .collect();
                (resolved.recipes[i].clone(), contents)
            })),
        }
    }

    fn gone(&self) -> &'static str {
        match self {
            Old::Store(_) => "is gone from the store",
            Old::Plan { .. } => "is not in the other manifest",
        }
    }
}

/// The recursive diff of a new recipe against an old key, collecting into an explanation.
struct Diff<'a, 'x> {
    plan: &'a Plan,
    resolved: &'a Resolved,
    old: &'a Old<'a>,
    cache: &'a FingerprintCache,
    x: &'x mut Explanation,
    seen: HashSet<usize>,
}

impl<'a, 'x> Diff<'a, 'x> {
    fn start(
        plan: &'a Plan,
        resolved: &'a Resolved,
        old: &'a Old<'a>,
        cache: &'a FingerprintCache,
        x: &'x mut Explanation,
    ) -> Self {
        Diff {
            plan,
            resolved,
            old,
            cache,
            x,
            seen: HashSet::new(),
        }
    }

    fn push(&mut self, depth: usize, idx: usize, what: ChangeKind, text: String) {
        self.x.lines.push(format!("{}{text}", "  ".repeat(depth)));
        self.x.changes.push(Change {
            depth,
            instance: self.plan.instances[idx].name.clone(),
            what,
            text,
        });
    }

    fn diff(&mut self, idx: usize, old_key: &StageKey, depth: usize) -> Result<()> {
        let inst = &self.plan.instances[idx];
        let new = &self.resolved.recipes[idx];
        let Some((old, old_contents)) = self.old.recipe(&inst.kind, old_key)? else {
            let text = format!(
                "(the earlier artifact {}/{} {}; cannot say more)",
                inst.kind,
                old_key.short(),
                self.old.gone()
            );
            self.push(depth, idx, ChangeKind::Note, text);
            return Ok(());
        };
        if old.version != new.version {
            let text = format!(
                "stage version of `{}` changed: {} -> {}",
                inst.kind, old.version, new.version
            );
            let what = ChangeKind::Version {
                from: old.version,
                to: new.version,
            };
            self.push(depth, idx, what, text);
        }
        for c in param_changes(&old, new) {
            let text = match (&c.from, &c.to) {
                (Some(a), Some(b)) => format!("parameter `{}` changed: {a} -> {b}", c.name),
                (Some(a), None) => format!("parameter `{}` removed (was {a})", c.name),
                (None, Some(b)) => format!("parameter `{}` added: {b}", c.name),
                (None, None) => continue,
            };
            self.push(depth, idx, ChangeKind::Parameter(c), text);
        }
        for r in rebindings(&old, new, inst) {
            let (slot, n, reference, b) = match r {
                Rebinding::Count {
                    slot,
                    before,
                    after,
                } => {
                    let text =
                        format!("input `{slot}` now binds {after} artifact(s), was {before}");
                    let what = ChangeKind::Input {
                        slot: slot.to_string(),
                    };
                    self.push(depth, idx, what, text);
                    continue;
                }
                Rebinding::Key {
                    slot,
                    n,
                    reference,
                    before,
                    ..
                } => (slot, n, reference, before),
            };
            let input = || ChangeKind::Input {
                slot: slot.to_string(),
            };
            match reference {
                InputRef::External(e) => {
                    let ext = &self.plan.externals[e];
                    let fp = &self.resolved.externals[e];
                    let old_content = old_contents
                        .get(slot)
                        .and_then(|c| c.get(n))
                        .cloned()
                        .flatten();
                    match old_content {
                        Some(old) if old == fp.digest => {
                            let text = format!(
                                "input `{slot}` ({}): its kind or parameters changed, not its files",
                                ext.reference()
                            );
                            self.push(depth, idx, input(), text);
                        }
                        Some(old) => {
                            let text = format!(
                                "input `{slot}` ({}, {}): files changed ({} files, {} bytes now)",
                                ext.reference(),
                                ext.path.display(),
                                fp.files,
                                fp.bytes
                            );
                            self.push(depth, idx, input(), text);
                            if let Some(changes) = self.cache.changes_since(&ext.path, &old) {
                                let pad = "  ".repeat(depth);
                                for c in changes.iter().take(10) {
                                    self.x.lines.push(format!("{pad}  {c}"));
                                }
                                if changes.len() > 10 {
                                    self.x.lines.push(format!(
                                        "{pad}  ... and {} more",
                                        changes.len() - 10
                                    ));
                                }
                            }
                        }
                        None => {
                            let text = format!(
                                "input `{slot}` ({}, {}): content, kind or parameters changed",
                                ext.reference(),
                                ext.path.display()
                            );
                            self.push(depth, idx, input(), text);
                        }
                    }
                }
                InputRef::Stage(s) => {
                    let up = &self.plan.instances[s];
                    let text = format!(
                        "input `{slot}` ({}) changed: key {} -> {}",
                        up.name,
                        &b[..12.min(b.len())],
                        self.resolved.keys[s].short()
                    );
                    self.push(depth, idx, input(), text);
                    if self.seen.insert(s) {
                        if let Some(old_up) = StageKey::parse(b) {
                            self.diff(s, &old_up, depth + 1)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::fmt_time(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::fmt_time(1_795_000_000.0), "2026-11-18 11:06:40 UTC");
    }
}
