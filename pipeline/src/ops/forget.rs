//! `forget`: drops instances from a manifest's run index, so that `status` shows them missing and
//! the next run rebuilds them; their artifacts stay in the store (shared by key) until then.

use crate::error::Result;
use crate::executor::{Resolved, State};
use crate::key::StageKey;
use crate::lease::now_unix;
use crate::plan::Plan;
use crate::store::{ForgetRecord, Store};

/// One instance `forget` dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Forgotten {
    pub instance: String,
    pub kind: String,
    pub key: StageKey,
    /// Its state label before (`up-to-date`, `stale`, ...).
    pub was: &'static str,
    /// Whether a complete artifact of its key stays in the store.
    pub artifact_kept: bool,
}

/// Forgets the instances `which` of `plan` (with their states before, `states`): each one's index
/// entry is deleted, and where its artifact is complete a `_forgotten/` record says so, which
/// makes it missing for this manifest until a run rebuilds it (over the artifact, in one step).
pub fn forget(
    plan: &Plan,
    resolved: &Resolved,
    states: &[State],
    store: &Store,
    which: &[usize],
) -> Result<Vec<Forgotten>> {
    let mut out = Vec::with_capacity(which.len());
    for &i in which {
        let inst = &plan.instances[i];
        let key = &resolved.keys[i];
        let artifact_kept = store.is_complete(&inst.kind, key)?;
        if artifact_kept {
            store.put_json(
                &Store::forgotten_path(&plan.manifest_id, &inst.name),
                &ForgetRecord {
                    instance: inst.name.clone(),
                    kind: inst.kind.clone(),
                    key: key.clone(),
                    unix: now_unix(),
                },
                false,
            )?;
        }
        store.delete(&Store::index_path(&plan.manifest_id, &inst.name))?;
        out.push(Forgotten {
            instance: inst.name.clone(),
            kind: inst.kind.clone(),
            key: key.clone(),
            was: states[i].label(),
            artifact_kept,
        });
    }
    Ok(out)
}
