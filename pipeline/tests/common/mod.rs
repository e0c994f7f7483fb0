//! Test stages for the runner's own tests: they record what they saw, so tests can check what ran.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pipeline::executor::{resolve, run, Resolved, RunOptions, RunReport};
use pipeline::{
    FingerprintCache, InputAccepts, InputSpec, ParamSpec, ParamType, Plan, ProgressSink, Stage,
    StageContext, StageError, StageRegistry, Store, StoreSettings, StoreUrl, Value,
};

/// The local store of a test folder: `dir/artifacts`, with its cache in `dir/cache`.
pub fn local_store(dir: &Path) -> Store {
    Store::open(
        &StoreUrl::Local(dir.join("artifacts")),
        &StoreSettings::default(),
        &dir.join("cache"),
    )
    .unwrap()
}

/// The keys of `plan`, with external fingerprints cached in `dir/cache`.
pub fn resolve_in(dir: &Path, plan: &Plan, reg: &StageRegistry) -> Resolved {
    resolve(plan, reg, &FingerprintCache::new(dir.join("cache")), false).unwrap()
}

/// Loads `dir/m.toml` and runs all of it on the local store of `dir`, never cancelled.
pub fn run_manifest(
    dir: &Path,
    reg: &StageRegistry,
    opts: &RunOptions,
    sink: Arc<dyn ProgressSink>,
) -> RunReport {
    let plan = pipeline::plan::load(&dir.join("m.toml"), reg).unwrap();
    let store = local_store(dir);
    let resolved = resolve_in(dir, &plan, reg);
    run(
        &plan,
        reg,
        &store,
        &resolved,
        opts,
        sink,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .unwrap()
}

/// Writes `out.txt` = its params plus the contents of its inputs' `out.txt`; counts its runs.
pub struct Echo {
    pub kind: &'static str,
    pub version: u32,
    pub runs: Arc<AtomicUsize>,
}

impl Stage for Echo {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn about(&self) -> &'static str {
        "test stage"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("lr", ParamType::Float, Value::Float(1e-3), "learning rate"),
            ParamSpec::optional("seed", ParamType::Int, Value::Int(0), "seed"),
            ParamSpec::optional("name", ParamType::Str, Value::Str("x".into()), "a name"),
            ParamSpec::optional(
                "fail",
                ParamType::Bool,
                Value::Bool(false),
                "fail on purpose",
            ),
            ParamSpec::optional(
                "mode",
                ParamType::Choice(&["fast", "slow"]),
                Value::Str("fast".into()),
                "mode",
            ),
            ParamSpec::optional(
                "extra",
                ParamType::Any,
                Value::Table(Default::default()),
                "anything",
            ),
            ParamSpec::optional(
                "sleep_ms",
                ParamType::Int,
                Value::Int(0),
                "sleep before writing",
            ),
            ParamSpec::optional(
                "panic",
                ParamType::Bool,
                Value::Bool(false),
                "panic on purpose",
            ),
        ]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![
            InputSpec::many("src", InputAccepts::Any, "upstream").optional(),
            InputSpec::one("data", InputAccepts::Dataset, "a dataset").optional(),
        ]
    }
    fn validate(&self, params: &pipeline::Params) -> Result<(), pipeline::stage::ParamError> {
        match params.get("lr").and_then(Value::as_f64) {
            Some(lr) if lr <= 0.0 => Err(format!("lr must be positive, got {lr}").into()),
            _ => Ok(()),
        }
    }
    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if ctx.bool_param("panic")? {
            panic!("index out of bounds on purpose");
        }
        std::thread::sleep(std::time::Duration::from_millis(
            ctx.i64_param("sleep_ms")? as u64
        ));
        if ctx.bool_param("fail")? {
            return Err("failing on purpose (row 7 of nothing.csv)".into());
        }
        let mut text = pipeline::value::canonical_params(ctx.params());
        for a in ctx.inputs("src") {
            text.push('\n');
            text.push_str(&std::fs::read_to_string(a.path.join("out.txt"))?);
        }
        for a in ctx.inputs("data") {
            for e in std::fs::read_dir(&a.path)? {
                text.push_str(&std::fs::read_to_string(e?.path())?);
            }
        }
        std::fs::create_dir_all(ctx.out_dir().join("sub"))?;
        std::fs::write(ctx.out_dir().join("out.txt"), text)?;
        std::fs::write(ctx.out_dir().join("sub/big.bin"), vec![7u8; 1000])?;
        ctx.log("wrote out.txt");
        Ok(())
    }
}

pub struct Fixture {
    pub reg: StageRegistry,
    pub runs: Arc<AtomicUsize>,
}

pub fn registry(version: u32) -> Fixture {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(Echo {
        kind: "echo",
        version,
        runs: runs.clone(),
    }));
    reg.register(Arc::new(Echo {
        kind: "other",
        version: 1,
        runs: runs.clone(),
    }));
    Fixture { reg, runs }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

/// A shardable stage (kind `split`): writes lines `start..end` of `0..lines` to `out.txt`, where
/// `start..end` is its `shard = "i/n"` part; the merge concatenates the shards' `out.txt`.
pub struct Split {
    pub runs: Arc<AtomicUsize>,
    pub merges: Arc<AtomicUsize>,
}

impl Stage for Split {
    fn kind(&self) -> &'static str {
        "split"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test stage that can be sharded"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("lines", ParamType::Int, Value::Int(10), "lines to write"),
            ParamSpec::optional("shard", ParamType::Str, Value::Str("0/1".into()), "i/n"),
        ]
    }
    fn inputs(&self) -> Vec<InputSpec> {
        vec![InputSpec::many("src", InputAccepts::Any, "upstream").optional()]
    }
    fn validate(&self, params: &pipeline::Params) -> Result<(), pipeline::stage::ParamError> {
        let s = params.get("shard").and_then(Value::as_str).unwrap_or("0/1");
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| "parameter `shard`: not i/n".to_string())?;
        let (i, n): (u32, u32) = (
            i.parse().map_err(|_| "bad shard index".to_string())?,
            n.parse().map_err(|_| "bad shard count".to_string())?,
        );
        if i >= n {
            return Err(format!("parameter `shard`: `{s}` has its index outside 0..{n}").into());
        }
        Ok(())
    }
    fn sharding(&self) -> Option<pipeline::Sharding> {
        Some(pipeline::Sharding {
            param: "shard",
            merge: "concatenates out.txt",
        })
    }
    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let lines = ctx.i64_param("lines")? as usize;
        let (i, n) = ctx.str_param("shard")?.split_once('/').unwrap();
        let (i, n): (usize, usize) = (i.parse()?, n.parse()?);
        let text: String = (lines * i / n..lines * (i + 1) / n)
            .map(|k| format!("line {k}\n"))
            .collect();
        std::fs::write(ctx.out_dir().join("out.txt"), text)?;
        Ok(())
    }
    fn merge(&self, ctx: &StageContext) -> Result<(), StageError> {
        self.merges.fetch_add(1, Ordering::SeqCst);
        let mut text = String::new();
        for s in ctx.inputs(pipeline::SHARDS_SLOT) {
            text.push_str(&std::fs::read_to_string(s.path.join("out.txt"))?);
        }
        std::fs::write(ctx.out_dir().join("out.txt"), text)?;
        Ok(())
    }
}

/// [`registry`] plus the shardable `split` kind; its merges are counted in `merges`.
pub fn sharded_registry() -> (Fixture, Arc<AtomicUsize>) {
    let mut f = registry(1);
    let merges = Arc::new(AtomicUsize::new(0));
    f.reg.register(Arc::new(Split {
        runs: f.runs.clone(),
        merges: merges.clone(),
    }));
    (f, merges)
}
