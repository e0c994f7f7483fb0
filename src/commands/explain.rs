//! `adaptor explain`: why one stage instance would (or would not) run: which parameter, input or
//! stage version changed since it was last built (from this manifest, else from any other in the
//! store), or against the instance of the same name in another manifest (`--against`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use pipeline::ops::Against;
use pipeline::Plan;

use super::Context;
use crate::cli::StoreChoice;
use crate::render;

pub fn explain(
    cx: &Context,
    manifest: &Path,
    stage: &str,
    against: Option<&Path>,
    json: bool,
    store: &StoreChoice,
) -> Result<ExitCode> {
    let plan = cx.load_plan(manifest)?;
    let idx = instance_named(&plan, manifest, stage)?;
    let url = store.url(Some(&plan));
    let store = cx.read_store(&url)?;
    let resolved = cx.resolve(&plan, false)?;
    let other = match against {
        Some(path) => {
            let other = cx.load_plan(path)?;
            let resolved = cx.resolve(&other, false)?;
            Some((other, resolved))
        }
        None => None,
    };
    let against = match &other {
        Some((plan, resolved)) => Against::Plan { plan, resolved },
        None => Against::LastBuild,
    };
    let x = pipeline::ops::explain(&plan, &resolved, &store, &cx.fp_cache, idx, &against)?;
    if json {
        print!("{}", render::render_explain_json(&x));
    } else {
        print!("{}", render::render_explain(&x.lines));
    }
    cx.print_warnings(&store);
    Ok(ExitCode::SUCCESS)
}

/// The instance `stage` names: an instance name, or a stage name (or glob) matching exactly one.
fn instance_named(plan: &Plan, manifest: &Path, stage: &str) -> Result<usize> {
    if let Some(i) = plan.instance(stage) {
        return Ok(i);
    }
    match plan.select(stage).as_slice() {
        [one] => Ok(*one),
        [] => bail!("{}: no stage instance named `{stage}`", manifest.display()),
        many => bail!(
            "`{stage}` matches {} instances; name one: {}",
            many.len(),
            many.iter()
                .take(6)
                .map(|&i| plan.instances[i].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
