//! One module per `adaptor` command. Each gathers its data through the `pipeline` and `stages`
//! libraries, prints what a `render_*` function makes of it and returns the exit code; what the
//! commands share (the stage registry, opening stores, loading manifests) is here.

mod completions;
mod dag;
mod diff;
mod embed;
mod exec;
mod explain;
mod forget;
mod gc;
mod ingest;
mod path;
mod pull;
mod results;
mod run;
mod show;
mod stages;
mod status;
mod synth;
mod verify;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use pipeline::{FingerprintCache, Plan, StageKey, StageRegistry, Store, StoreUrl};

use crate::cli::{CommandSettings, Settings};

/// Runs the command `settings` name; `Ok` carries the exit code of a command that ran to its
/// end (1 where it found failed stages or bad artifacts), `Err` an error that stopped it.
pub fn dispatch(settings: &Settings) -> Result<ExitCode> {
    settings.decode_limits.set();
    let cx = Context {
        settings,
        reg: registry(&settings.torch_worker),
        fp_cache: FingerprintCache::new(&settings.cache),
    };
    match &settings.command {
        CommandSettings::Run(run) => run::run(&cx, run),
        CommandSettings::Exec(exec) => exec::exec(&cx, exec),
        CommandSettings::Status {
            manifest,
            json,
            exit_code,
            store,
        } => status::status(&cx, manifest, *json, *exit_code, store),
        CommandSettings::Explain {
            manifest,
            stage,
            against,
            json,
            store,
        } => explain::explain(&cx, manifest, stage, against.as_deref(), *json, store),
        CommandSettings::Results(s) => results::results(&cx, s),
        CommandSettings::Diff(s) => diff::diff(&cx, s),
        CommandSettings::Gc {
            manifests,
            dry_run,
            json,
            store,
        } => gc::gc(&cx, manifests, *dry_run, *json, store),
        CommandSettings::Verify {
            manifests,
            all,
            quarantine,
            json,
            store,
        } => verify::verify(&cx, manifests, *all, *quarantine, *json, store),
        CommandSettings::Show {
            target,
            json,
            store,
        } => show::show(&cx, target, *json, store),
        CommandSettings::Stages { json } => stages::stages(&cx, *json),
        CommandSettings::Embed(what) => embed::embed(&cx, what),
        CommandSettings::Completions(shell) => completions::completions(*shell),
        CommandSettings::Path(s) => path::path(&cx, s),
        CommandSettings::Pull(s) => pull::pull(&cx, s),
        CommandSettings::Forget(s) => forget::forget(&cx, s),
        CommandSettings::Dag(s) => dag::dag(&cx, s),
        CommandSettings::Synth(synth) => synth::synth(&cx, synth),
        CommandSettings::Ingest(ingest) => ingest::ingest(&cx, ingest),
    }
}

/// Every stage kind this binary runs: the built-in `command`, the data stages in process, the
/// model stages through the libtorch worker at `torch_worker`.
pub fn registry(torch_worker: &Path) -> StageRegistry {
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(pipeline::builtin::CommandStage));
    ::stages::register(&mut reg);
    ::stages::register_torch(&mut reg, torch_worker);
    reg
}

/// An artifact of a stage instance: its kind (top folder in the store) and key.
type Artifact = (String, StageKey);

/// What every command works with: the settings, the stage registry, the fingerprint cache.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub reg: StageRegistry,
    pub fp_cache: FingerprintCache,
}

impl Context<'_> {
    fn quiet(&self) -> bool {
        self.settings.quiet
    }

    fn load_plan(&self, path: &Path) -> Result<Plan> {
        // Manifest errors already say file:line:col: key: what; kept typed for the exit code.
        Ok(pipeline::plan::load(path, &self.reg)?)
    }

    /// The manifest's instances with their keys (`verify`: rehash external inputs).
    fn resolve(&self, plan: &Plan, verify: bool) -> Result<pipeline::executor::Resolved> {
        Ok(pipeline::executor::resolve(
            plan,
            &self.reg,
            &self.fp_cache,
            verify,
        )?)
    }

    fn open_store(&self, url: &StoreUrl) -> Result<Store> {
        Store::open(url, &self.settings.store_settings, &self.settings.cache)
            .with_context(|| format!("cannot open store {url}"))
    }

    /// For commands that only read: a local store that does not exist yet is not created.
    fn read_store(&self, url: &StoreUrl) -> Result<Store> {
        Store::open_existing(url, &self.settings.store_settings, &self.settings.cache)
            .with_context(|| format!("cannot open store {url}"))
    }

    /// The (kind, key) of every instance of the manifests (those `gc` keeps and `verify`
    /// checks), and the first manifest's plan (whose `[store]` they use).
    fn artifacts_of(
        &self,
        manifests: &[impl AsRef<Path>],
    ) -> Result<(Vec<Artifact>, Option<Plan>)> {
        let mut artifacts = Vec::new();
        let mut first_plan = None;
        for m in manifests {
            let plan = self.load_plan(m.as_ref())?;
            let resolved = self.resolve(&plan, false)?;
            for (inst, key) in plan.instances.iter().zip(resolved.keys) {
                artifacts.push((inst.kind.clone(), key));
            }
            first_plan.get_or_insert(plan);
        }
        Ok((artifacts, first_plan))
    }

    /// Prints what the store noticed and tolerated (unreadable records treated as stale).
    fn print_warnings(&self, store: &Store) {
        for w in store.take_warnings() {
            if !self.quiet() {
                eprintln!("warning: {w}");
            }
        }
    }
}

/// This machine's name, for leases and artifact records.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
