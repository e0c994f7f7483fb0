//! `verify`: rehashes artifacts against their `_manifest.json`, optionally moving bad ones aside
//! (quarantine) so the next run rebuilds them.

use crate::error::Result;
use crate::key::StageKey;
use crate::store::Store;

/// One artifact checked by [`verify`].
#[derive(Debug)]
pub struct Verified {
    pub kind: String,
    pub key: StageKey,
    pub report: crate::store::VerifyReport,
    /// Where it was moved, when bad and `quarantine` was asked.
    pub quarantined: Option<String>,
}

/// Every artifact folder in the store (a known or unknown kind, named by a key).
pub fn all_artifacts(store: &Store) -> Result<Vec<(String, StageKey)>> {
    let mut out = Vec::new();
    for kind in store.list_dirs("")? {
        if kind.starts_with('_') {
            continue;
        }
        for key in store.list_dirs(&kind)? {
            if let Some(k) = StageKey::parse(&key) {
                out.push((kind.clone(), k));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Rehashes each complete artifact of `items` against its `_manifest.json` (incomplete ones are
/// left out); with `quarantine`, moves each bad one aside so the next run rebuilds it.
pub fn verify(
    store: &Store,
    items: &[(String, StageKey)],
    quarantine: bool,
) -> Result<Vec<Verified>> {
    let mut out = Vec::new();
    for (kind, key) in items {
        let Some(report) = store.verify(kind, key)? else {
            continue;
        };
        let quarantined = if quarantine && !report.bad.is_empty() {
            Some(store.quarantine(kind, key)?)
        } else {
            None
        };
        out.push(Verified {
            kind: kind.clone(),
            key: key.clone(),
            report,
            quarantined,
        });
    }
    Ok(out)
}
