//! Keys: fingerprints of the external inputs, then every instance's key in dependency order.
//!
//! Nothing here touches the store; the same plan and inputs give the same keys anywhere.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fingerprint::{Fingerprint, FingerprintCache};
use crate::key::{KeyRecipe, StageKey};
use crate::plan::{InputRef, Plan};
use crate::stage::StageRegistry;
use crate::value::canonical_params;

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
                .fingerprint(&e.path, verify)
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
        let recipe = KeyRecipe {
            kind: inst.kind.clone(),
            version: stage.version(),
            params: inst.params.clone(),
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
