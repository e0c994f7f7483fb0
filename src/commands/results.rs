//! `adaptor results`: the experiment's results tables in the terminal (or JSON, CSV), read from
//! each evaluation instance's `result.json` in the store and grouped by the report's own code, so
//! the numbers are those of the report's `results.md`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use artifacts::report::{tables, EvalResult, RESULT_FILE};
use pipeline::{InputAccepts, Plan, Resolved, Store};

use super::Context;
use crate::cli::{OutputFormat, ResultsSettings};
use crate::render::{self, ResultsView};

pub fn results(cx: &Context, s: &ResultsSettings) -> Result<ExitCode> {
    let plan = cx.load_plan(&s.manifest)?;
    let url = s.store.url(Some(&plan));
    let store = cx.read_store(&url)?;
    let resolved = cx.resolve(&plan, false)?;
    let found = read_results(&plan, &resolved, &store)?;
    cx.print_warnings(&store);
    if found.evaluations == 0 {
        bail!(
            "{} has no evaluation instances (stages of kind {})",
            s.manifest.display(),
            evaluation_kinds().join(", ")
        );
    }
    if found.results.is_empty() {
        bail!(
            "nothing built yet: none of the {} evaluation instance(s) of {} is in {url} ({}); \
             `adaptor run {}` builds them",
            found.evaluations,
            s.manifest.display(),
            render::name_some(&found.missing, 5),
            s.manifest.display()
        );
    }
    let mut tables = tables(&found.results, s.split, s.metric.as_deref());
    if let Some(t) = &s.task {
        let all: Vec<String> = tables.iter().map(|t| t.stem.clone()).collect();
        tables.retain(|table| {
            [&table.dataset, &table.task, &table.head, &table.stem].contains(&t)
                || table.stem.starts_with(&format!("{t}-"))
        });
        if tables.is_empty() {
            bail!(
                "no results table matches --task {t}; the tables are {}",
                all.join(", ")
            );
        }
    }
    if tables.is_empty() {
        bail!(
            "no result of {} has the metric `{}` on the {} split",
            s.manifest.display(),
            s.metric.as_deref().unwrap_or("?"),
            s.split.name()
        );
    }
    let view = ResultsView {
        manifest: &s.manifest.display().to_string(),
        store: &url.to_string(),
        tables: &tables,
        evaluations: found.evaluations,
        missing: &found.missing,
    };
    print!(
        "{}",
        match s.format {
            OutputFormat::Human => render::render_results(&view),
            OutputFormat::Json => render::render_results_json(&view),
            OutputFormat::Csv => render::render_results_csv(&view),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The kinds whose artifacts hold a `result.json`: what the `report` stage's `results` input
/// takes (one list, kept by the report's declaration).
pub fn evaluation_kinds() -> Vec<&'static str> {
    use ::stages::kinds::report::Report;
    use ::stages::StageKind;
    Report::inputs()
        .into_iter()
        .filter(|spec| spec.name == "results")
        .flat_map(|spec| match spec.accepts {
            InputAccepts::Stage(kinds) => kinds.to_vec(),
            _ => Vec::new(),
        })
        .collect()
}

/// The evaluation results of a plan that are in the store.
pub struct Found {
    /// Evaluation instances in the plan.
    pub evaluations: usize,
    /// Their results, each named by its instance (as the report names it).
    pub results: Vec<EvalResult>,
    /// The instances whose artifact for the current key is not in the store.
    pub missing: Vec<String>,
}

/// Reads `result.json` of every evaluation instance of `plan` whose current key is complete.
pub fn read_results(plan: &Plan, resolved: &Resolved, store: &Store) -> Result<Found> {
    let kinds = evaluation_kinds();
    let mut found = Found {
        evaluations: 0,
        results: Vec::new(),
        missing: Vec::new(),
    };
    for (i, inst) in plan.instances.iter().enumerate() {
        if !kinds.contains(&inst.kind.as_str()) {
            continue;
        }
        found.evaluations += 1;
        match read_result(store, &inst.kind, &resolved.keys[i])? {
            Some(mut r) => {
                r.instance = inst.name.clone();
                found.results.push(r);
            }
            None => found.missing.push(inst.name.clone()),
        }
    }
    Ok(found)
}

/// The `result.json` of the complete artifact `kind`/`key`, if there is one.
pub fn read_result(
    store: &Store,
    kind: &str,
    key: &pipeline::StageKey,
) -> Result<Option<EvalResult>> {
    let Some(m) = store.read_manifest(kind, key)? else {
        return Ok(None);
    };
    let rel = m.file_rel(RESULT_FILE);
    let bytes = store
        .get(&rel)?
        .ok_or_else(|| anyhow!("{kind}/{} has no {RESULT_FILE}", key.short()))?;
    let r = EvalResult::parse(&bytes, Path::new(&rel)).with_context(|| format!("in {rel}"))?;
    Ok(Some(r))
}
