//! `adaptor diff`: two manifests (or one manifest in two stores) compared: which instances
//! differ and by which parameters or inputs, and the test metrics of the evaluations that differ,
//! side by side where both are built.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use pipeline::ops::compare;

use super::results::{evaluation_kinds, read_result};
use super::Context;
use crate::cli::DiffSettings;
use crate::render::{self, DiffSide, DiffView};

pub fn diff(cx: &Context, s: &DiffSettings) -> Result<ExitCode> {
    let plan_a = cx.load_plan(&s.manifest_a)?;
    let plan_b = cx.load_plan(&s.manifest_b)?;
    let (url_a, url_b) = (s.store_a.url(Some(&plan_a)), s.store_b.url(Some(&plan_b)));
    let store_a = cx.read_store(&url_a)?;
    let store_b = if url_b == url_a {
        None
    } else {
        Some(cx.read_store(&url_b)?)
    };
    let resolved_a = cx.resolve(&plan_a, false)?;
    let resolved_b = cx.resolve(&plan_b, false)?;
    let d = compare(&plan_a, &resolved_a, &plan_b, &resolved_b);
    let kinds = evaluation_kinds();
    let mut metrics = BTreeMap::new();
    for c in &d.changed {
        if !kinds.contains(&c.kind.as_str()) {
            continue;
        }
        let a = read_result(&store_a, &c.kind, &c.key_a)?;
        let b = read_result(store_b.as_ref().unwrap_or(&store_a), &c.kind, &c.key_b)?;
        metrics.insert(c.instance.clone(), (a.map(|r| r.test), b.map(|r| r.test)));
    }
    cx.print_warnings(&store_a);
    if let Some(b) = &store_b {
        cx.print_warnings(b);
    }
    let view = DiffView {
        a: DiffSide {
            manifest: s.manifest_a.display().to_string(),
            store: url_a.to_string(),
        },
        b: DiffSide {
            manifest: s.manifest_b.display().to_string(),
            store: url_b.to_string(),
        },
        diff: &d,
        metrics: &metrics,
    };
    if s.json {
        print!("{}", render::render_diff_json(&view));
    } else {
        print!("{}", render::render_diff(&view));
    }
    Ok(ExitCode::SUCCESS)
}
