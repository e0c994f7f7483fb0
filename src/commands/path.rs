//! `adaptor path`: where an instance's current artifact (or one file of it) is, for scripts
//! (`$(adaptor path manifests/demo.toml report results.md)`); why there is none, when there is none.
//! Also what `pull`, `forget` and `dag` share: a manifest's plan, keys and states in its store.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use pipeline::executor::{self, Resolved, State};
use pipeline::{Plan, Store, StoreUrl};

use super::Context;
use crate::cli::{PathSettings, StoreChoice};
use crate::render::{self, display_path, Located};

/// A manifest with its keys and the state of each instance in its store.
pub(super) struct Standing {
    pub plan: Plan,
    pub url: StoreUrl,
    pub store: Store,
    pub resolved: Resolved,
    pub states: Vec<State>,
}

impl Standing {
    /// Reads `manifest` and its store (`write`: opened for writing, else read only).
    pub fn of(cx: &Context, manifest: &Path, store: &StoreChoice, write: bool) -> Result<Self> {
        let plan = cx.load_plan(manifest)?;
        let url = store.url(Some(&plan));
        let store = match write {
            true => cx.open_store(&url)?,
            false => cx.read_store(&url)?,
        };
        let resolved = cx.resolve(&plan, false)?;
        let states = executor::states(&plan, &resolved, &store, executor::LEASE_SECS)?;
        cx.print_warnings(&store);
        Ok(Standing {
            plan,
            url,
            store,
            resolved,
            states,
        })
    }

    /// The instances any of `patterns` matches (instance names, stage names or globs), in plan
    /// order; a pattern that matches nothing is an error.
    pub fn matching(&self, patterns: &[String]) -> Result<Vec<usize>> {
        let mut picked = std::collections::BTreeSet::new();
        for p in patterns {
            let m = self.plan.select(p);
            if m.is_empty() {
                return Err(pipeline::Error::NoSuchInstance {
                    pattern: p.clone(),
                    hint: format!(" in {}", self.plan.manifest.display()),
                }
                .into());
            }
            picked.extend(m);
        }
        Ok(picked.into_iter().collect())
    }

    /// Instance `i` as `path` and `pull` report it; `file` inside its artifact when given.
    pub fn located(&self, i: usize, file: Option<&str>) -> Result<Located<'_>> {
        let inst = &self.plan.instances[i];
        let key = &self.resolved.keys[i];
        let path = match &self.states[i] {
            State::UpToDate => {
                let m = self.store.read_manifest(&inst.kind, key)?.ok_or_else(|| {
                    anyhow::anyhow!("{}: its artifact vanished while read", inst.name)
                })?;
                let rel = match file {
                    None => m.file_rel("").trim_end_matches('/').to_string(),
                    Some("_manifest.json") => Store::manifest_path(&inst.kind, key),
                    Some(f) if f == "_log.txt" || m.files.iter().any(|r| r.path == f) => {
                        m.file_rel(f)
                    }
                    Some(f) => bail!(
                        "{} has no file `{f}`; its files: {}",
                        inst.name,
                        m.files
                            .iter()
                            .map(|r| r.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                Some(display_path(&self.url, &rel))
            }
            _ => None,
        };
        Ok(Located {
            instance: &inst.name,
            kind: &inst.kind,
            key,
            state: &self.states[i],
            path,
        })
    }
}

pub fn path(cx: &Context, s: &PathSettings) -> Result<ExitCode> {
    let standing = Standing::of(cx, &s.manifest, &s.store, false)?;
    let i = one_instance(&standing, &s.instance)?;
    let located = standing.located(i, s.file.as_deref())?;
    if s.json {
        print!("{}", render::render_path_json(&located, &standing.url));
    } else if located.path.is_some() {
        print!("{}", render::render_path(&located));
    }
    if located.path.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    eprint!(
        "{}",
        render::render_not_current(&located, &s.manifest, &standing.url)
    );
    Ok(ExitCode::from(1))
}

/// The one instance `name` names: an instance name, or a stage name or glob matching exactly one.
fn one_instance(standing: &Standing, name: &str) -> Result<usize> {
    let plan = &standing.plan;
    if let Some(i) = plan.instance(name) {
        return Ok(i);
    }
    match standing.matching(&[name.to_string()])?.as_slice() {
        [one] => Ok(*one),
        many => bail!(
            "`{name}` matches {} instances; name one, e.g. `{}`",
            many.len(),
            plan.instances[many[0]].name
        ),
    }
}
