//! `adaptor verify`: rehash artifacts (those the manifests reference, or the whole store) against
//! their `_manifest.json`, optionally quarantining the bad ones; exits 1 if any is bad.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use crate::cli::StoreChoice;
use crate::exit::Exit;
use crate::render;

pub fn verify(
    cx: &Context,
    manifests: &[PathBuf],
    all: bool,
    quarantine: bool,
    json: bool,
    store: &StoreChoice,
) -> Result<ExitCode> {
    let (mut items, first_plan) = cx.artifacts_of(manifests)?;
    let url = store.url(first_plan.as_ref());
    let store = if quarantine {
        cx.open_store(&url)?
    } else {
        cx.read_store(&url)?
    };
    if all {
        items.extend(pipeline::ops::all_artifacts(&store)?);
    }
    items.sort();
    items.dedup();
    let checked = pipeline::ops::verify(&store, &items, quarantine)?;
    cx.print_warnings(&store);
    if json {
        print!("{}", render::render_verify_json(&checked, &url));
    } else {
        print!("{}", render::render_verify(&checked, &url));
    }
    Ok(if render::bad_artifacts(&checked) == 0 {
        Exit::Done
    } else {
        Exit::Failed
    }
    .into())
}
