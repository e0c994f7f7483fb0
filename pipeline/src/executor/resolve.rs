//! Keys: fingerprints of the external inputs, then every instance's key in dependency order.
//!
//! Nothing here touches the store; the same plan and inputs give the same keys anywhere.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fingerprint::{Fingerprint, FingerprintCache};
use crate::key::{KeyRecipe, StageKey};
use crate::plan::{InputRef, Instance, Plan};
use crate::stage::{Stage, StageRegistry, DEFAULT_THREADS};
use crate::value::{canonical_params, Value};

/// Keys of every instance of a plan, and the digests of its external inputs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub keys: Vec<StageKey>,
    pub recipes: Vec<KeyRecipe>,
    /// Per external input: its fingerprint.
    pub externals: Vec<Fingerprint>,
}

/// The digest that stands for an external input in keys: its kind, parameters and content.
pub fn external_digest(plan: &Plan, idx: usize, fp: &Fingerprint) -> String {
    let e = &plan.externals[idx];
    let text = format!(
        "adaptor-external-input/1\n{}\n{}\n{}\n{}\n",
        e.reference(),
        e.kind,
        canonical_params(&e.params),
        fp.digest
    );
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// Fingerprints the external inputs (in parallel) and computes every instance's key.
pub fn resolve(
    plan: &Plan,
    registry: &StageRegistry,
    cache: &FingerprintCache,
    verify: bool,
) -> Result<Resolved> {
    let externals: Vec<Fingerprint> = plan
        .externals
        .par_iter()
        .map(|e| {
            cache
                .fingerprint_with(&e.path, e.check, verify)
                .map_err(|err| Error::Fingerprint {
                    reference: e.reference(),
                    kind: e.kind.clone(),
                    path: e.path.clone(),
                    source: Box::new(err),
                })
        })
        .collect::<Result<_>>()?;
    let digests: Vec<String> = externals
        .iter()
        .enumerate()
        .map(|(i, fp)| external_digest(plan, i, fp))
        .collect();
    let mut keys: Vec<StageKey> = Vec::with_capacity(plan.instances.len());
    let mut recipes = Vec::with_capacity(plan.instances.len());
    for inst in &plan.instances {
        let stage = registry
            .get(&inst.kind)
            .expect("plans only hold registered kinds");
        let inputs = inst
            .inputs
            .iter()
            .map(|(slot, refs)| {
                let ks = refs
                    .iter()
                    .map(|r| match r {
                        InputRef::External(e) => digests[*e].clone(),
                        // Dependency order guarantees the upstream key is already computed.
                        InputRef::Stage(s) => keys[*s].to_string(),
                    })
                    .collect();
                (slot.clone(), ks)
            })
            .collect();
        let mut params = inst.params.clone();
        if let Some(threads) = keyed_threads(inst, stage.as_ref()) {
            params.insert("threads".into(), Value::Int(threads as i64));
        }
        let recipe = KeyRecipe {
            kind: inst.kind.clone(),
            version: stage.version(),
            params,
            inputs,
        };
        keys.push(recipe.key());
        recipes.push(recipe);
    }
    Ok(Resolved {
        keys,
        recipes,
        externals,
    })
}

/// The thread count that is part of an instance's key: its `threads` when the kind's output depends
/// on the count and it is not [`DEFAULT_THREADS`]. At the default the key is what it was before
/// `threads` existed (every default run used one thread per stage then, see `DEFAULT_THREADS`).
fn keyed_threads(inst: &Instance, stage: &dyn Stage) -> Option<usize> {
    let threads = inst.threads.unwrap_or(DEFAULT_THREADS);
    (stage.output_depends_on_threads() && threads != DEFAULT_THREADS).then_some(threads)
}

/// The memory budget of `inst` in bytes: its `memory` parameter, else an equal share of what the
/// run was given among `-j` stages (at least [`crate::stage::MIN_MEMORY`]).
pub fn stage_memory(inst: &Instance, opts: &super::RunOptions) -> u64 {
    inst.limits
        .memory
        .unwrap_or_else(|| (opts.memory / opts.jobs.max(1) as u64).max(crate::stage::MIN_MEMORY))
}

/// The threads an instance runs with: exactly its `threads` (or [`DEFAULT_THREADS`]) when the
/// kind's output depends on the count; otherwise its `threads` or `share`, its part of the cores.
pub fn stage_threads(inst: &Instance, stage: &dyn Stage, share: usize) -> usize {
    match inst.threads {
        Some(threads) => threads,
        None if stage.output_depends_on_threads() => DEFAULT_THREADS,
        None => share.max(1),
    }
}
