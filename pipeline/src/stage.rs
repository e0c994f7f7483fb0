//! The contract between the runner and a stage implementation.
//!
//! A stage declares its kind, version, parameters and inputs; the planner validates manifests
//! against that declaration. At run time the stage sees only a [`StageContext`]: its resolved
//! parameters, its inputs as local directories, and an empty output directory. It never reads the
//! manifest, the environment or the store itself.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::key::StageKey;
use crate::value::{Params, Value};

/// The type a parameter must have. Checked by the planner, so `run` can rely on it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    Bool,
    Int,
    /// A float; integers are accepted and widened (`lr = 1` means `1.0`).
    Float,
    Str,
    /// A string from a closed set, listed in errors.
    Choice(&'static [&'static str]),
    /// An array whose items all have the given type.
    List(Box<ParamType>),
    /// Anything (a table of options, say); the stage validates it in [`Stage::validate`].
    Any,
}

impl ParamType {
    pub fn describe(&self) -> String {
        match self {
            ParamType::Bool => "a boolean".into(),
            ParamType::Int => "an integer".into(),
            ParamType::Float => "a number".into(),
            ParamType::Str => "a string".into(),
            ParamType::Choice(c) => format!("one of {}", c.join(", ")),
            ParamType::List(t) => format!("an array of {}", strip_article(&t.describe())),
            ParamType::Any => "any value".into(),
        }
    }

    /// Checks `value` against this type and returns it normalised (ints widened to floats where a
    /// float is expected, so `lr = 1` and `lr = 1.0` give the same key).
    pub fn coerce(&self, value: &Value) -> Option<Value> {
        match (self, value) {
            (ParamType::Bool, Value::Bool(_))
            | (ParamType::Int, Value::Int(_))
            | (ParamType::Str, Value::Str(_))
            | (ParamType::Any, _) => Some(value.clone()),
            (ParamType::Float, Value::Float(f)) if f.is_finite() => Some(value.clone()),
            (ParamType::Float, Value::Int(i)) => Some(Value::Float(*i as f64)),
            (ParamType::Choice(choices), Value::Str(s)) if choices.contains(&s.as_str()) => {
                Some(value.clone())
            }
            (ParamType::List(item), Value::Array(items)) => items
                .iter()
                .map(|v| item.coerce(v))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array),
            _ => None,
        }
    }
}

fn strip_article(s: &str) -> String {
    s.strip_prefix("an ")
        .or_else(|| s.strip_prefix("a "))
        .map(|r| format!("{r}s"))
        .unwrap_or_else(|| s.to_string())
}

/// One declared parameter. `default: None` makes it required.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: Option<Value>,
    pub doc: &'static str,
}

impl ParamSpec {
    pub fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: None,
            doc,
        }
    }

    pub fn optional(name: &'static str, ty: ParamType, default: Value, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: Some(default),
            doc,
        }
    }
}

/// Parameters a stage's checks refused ([`Stage::validate`]): which one (`None` when no single
/// parameter is at fault) and why. The planner reports it at the key in the manifest
/// (`stages.NAME.params.KEY: message`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub key: Option<String>,
    pub message: String,
}

impl ParamError {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        ParamError {
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "parameter `{key}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParamError {}

impl From<String> for ParamError {
    fn from(message: String) -> Self {
        ParamError { key: None, message }
    }
}

/// What an input slot accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum InputAccepts {
    /// An external folder declared in the manifest under `[datasets.NAME]`.
    Dataset,
    /// An external folder declared under `[backbones.NAME]`.
    Backbone,
    /// The output of a stage of one of these kinds.
    Stage(&'static [&'static str]),
    /// A dataset folder or the output of one of these stage kinds (e.g. raw data that may be a
    /// downloaded dataset or a `synth` artifact).
    DatasetOrStage(&'static [&'static str]),
    /// Anything: a dataset, a backbone or any stage's output (generic stages such as `command`).
    Any,
}

/// One declared input slot.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: &'static str,
    pub accepts: InputAccepts,
    pub required: bool,
    /// Whether the slot takes a list (`"eval[*]"`, or an array of references).
    pub many: bool,
    pub doc: &'static str,
}

impl InputSpec {
    pub fn one(name: &'static str, accepts: InputAccepts, doc: &'static str) -> Self {
        InputSpec {
            name,
            accepts,
            required: true,
            many: false,
            doc,
        }
    }

    pub fn many(name: &'static str, accepts: InputAccepts, doc: &'static str) -> Self {
        InputSpec {
            name,
            accepts,
            required: true,
            many: true,
            doc,
        }
    }

    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }
}

/// The error a stage returns. Its message is shown to the user and written to the stage's log, so it
/// names the file, row or field at fault.
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The input slot through which a merge instance sees its shards' artifacts, in shard order.
pub const SHARDS_SLOT: &str = "shards";

/// A stage kind that can be split into shards (`shards = N` under `[stages.NAME]`) and merged back.
///
/// The planner turns such a stage into N shard instances, each with parameter `param` set to
/// `"i/N"`, and one merge instance with the stage's own name and parameters, which has the same
/// inputs plus the N shard artifacts under [`SHARDS_SLOT`] and runs [`Stage::merge`]. Its artifact
/// must equal what an unsharded instance would have written.
#[derive(Debug, Clone, PartialEq)]
pub struct Sharding {
    /// A string parameter (`shard`) that takes `"i/n"`: which part of the work an instance does.
    pub param: &'static str,
    /// What the merge does, for `adaptor stages` and docs.
    pub merge: &'static str,
}

/// One stage kind. Implementations live in the `stages` crate.
pub trait Stage: Send + Sync {
    /// The stage kind, as written in manifests (`kind = "ingest"`). Also the top folder of its
    /// artifacts in the store.
    fn kind(&self) -> &'static str;

    /// Bump when the stage's output for the same inputs and parameters changes (a bug fix, a new
    /// column): every artifact of this kind then becomes stale. Part of the key.
    fn version(&self) -> u32;

    /// One line for `--help` and `adaptor stages`.
    fn about(&self) -> &'static str;

    fn params(&self) -> Vec<ParamSpec>;

    fn inputs(&self) -> Vec<InputSpec>;

    /// Checks beyond types (ranges, combinations), naming the parameter at fault.
    fn validate(&self, _params: &Params) -> Result<(), ParamError> {
        Ok(())
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError>;

    /// `Some` when manifests may write `shards = N` for this kind (see [`Sharding`]).
    fn sharding(&self) -> Option<Sharding> {
        None
    }

    /// Builds the whole artifact from the shards' artifacts (input [`SHARDS_SLOT`], in shard
    /// order); the other inputs and the parameters are the unsharded instance's. Only called for
    /// kinds whose [`Stage::sharding`] is `Some`.
    fn merge(&self, ctx: &StageContext) -> Result<(), StageError> {
        Err(format!(
            "{}: stage kind `{}` cannot merge shards",
            ctx.instance(),
            self.kind()
        )
        .into())
    }
}

/// Where an input came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum InputOrigin {
    /// A folder declared in the manifest (`group` is `datasets` or `backbones`).
    External {
        group: String,
        name: String,
        kind: String,
        params: Params,
    },
    /// The artifact of another stage instance.
    Stage {
        kind: String,
        instance: String,
        key: StageKey,
    },
}

/// An input as the stage sees it: a local directory, read-only by convention.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub path: PathBuf,
    pub origin: InputOrigin,
}

impl InputArtifact {
    /// The `kind` of an external input (`mimic-cxr`, `bert`, ...) or the stage kind that produced it.
    pub fn kind(&self) -> &str {
        match &self.origin {
            InputOrigin::External { kind, .. } => kind,
            InputOrigin::Stage { kind, .. } => kind,
        }
    }

    /// The manifest name of an external input (`datasets.NAME`, `backbones.NAME`) or the instance
    /// that produced it.
    pub fn name(&self) -> &str {
        match &self.origin {
            InputOrigin::External { name, .. } => name,
            InputOrigin::Stage { instance, .. } => instance,
        }
    }
}

/// Receives progress from running stages; the binary draws it. Implementations must be cheap.
pub trait ProgressSink: Send + Sync {
    /// `done` of `total` `unit`s (e.g. images) for `instance`; `total == 0` means unknown.
    fn progress(&self, instance: &str, done: u64, total: u64, unit: &str);
    /// A log line, already written to the stage's log file.
    fn log(&self, instance: &str, line: &str);
    /// A scheduling event (planned, started, finished, waiting on another runner).
    fn event(&self, _event: &crate::executor::RunEvent) {}
}

/// A sink that drops everything (library use, tests).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _: &str, _: u64, _: u64, _: &str) {}
    fn log(&self, _: &str, _: &str) {}
}

/// Parameters every stage kind takes, which the runner reads and keeps out of the key: they say
/// how long an attempt may take, not what the artifact is (see [`Limits`]). A kind must not declare
/// a parameter of the same name.
pub const RUNNER_PARAMS: &[(&str, &str)] = &[
    (
        "timeout",
        "a time limit (\"90s\", \"30m\", \"2h\", \"1h30m\" or seconds): the stage's processes are \
         killed and the instance fails with \"timed out after ...\"; default none",
    ),
    (
        "watchdog",
        "how long the stage may go without a progress report or log line before `status` and the \
         live display call it silent (same form as timeout; default 10m)",
    ),
];

/// The default of the `watchdog` runner parameter.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(600);

/// What the runner parameters ([`RUNNER_PARAMS`]) of an instance say. Never part of a key: the same
/// artifact may be built under any limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// After this long the attempt is stopped and fails ("timed out after ...").
    pub timeout: Option<Duration>,
    /// Silence (no progress, no log line) longer than this is reported, not acted on.
    pub watchdog: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: None,
            watchdog: DEFAULT_WATCHDOG,
        }
    }
}

/// Reads a duration parameter: a positive number of seconds, or a string of `<number><unit>` parts
/// with units `ms`, `s`, `m`, `h`, `d` (`"90s"`, `"1h30m"`, `"2.5h"`).
pub fn parse_duration(value: &Value) -> Result<Duration, String> {
    let bad = || {
        format!(
            "expected a duration such as \"90s\", \"30m\", \"2h\", \"1h30m\" or a number of \
             seconds, found {value}"
        )
    };
    let secs = match value {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => {
            let text = s.trim();
            if text.is_empty() {
                return Err(bad());
            }
            let mut total = 0.0;
            let mut rest = text;
            while !rest.is_empty() {
                let num_end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .ok_or_else(bad)?;
                let number: f64 = rest[..num_end].parse().map_err(|_| bad())?;
                rest = &rest[num_end..];
                let unit_end = rest
                    .find(|c: char| c.is_ascii_digit() || c == '.')
                    .unwrap_or(rest.len());
                let scale = match rest[..unit_end].trim() {
                    "ms" => 0.001,
                    "s" => 1.0,
                    "m" | "min" => 60.0,
                    "h" => 3600.0,
                    "d" => 86400.0,
                    _ => return Err(bad()),
                };
                total += number * scale;
                rest = &rest[unit_end..];
            }
            total
        }
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("expected a positive duration, found {value}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration the way people write it: `1.5s`, `90s` → `1m30s`, `2h`, `1h0m5s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 || (h > 0 && s > 0) {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// When a stage last showed a sign of life (a progress report or a log line), shared with the
/// runner's watchdog and written into its lease for `status`.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    /// Milliseconds from `origin` to the last sign of life.
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last sign of life (since the start if there was none).
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a stage may touch while it runs.
pub struct StageContext {
    instance: String,
    key: StageKey,
    params: Params,
    inputs: BTreeMap<String, Vec<InputArtifact>>,
    out_dir: PathBuf,
    threads: usize,
    log_file: Mutex<Option<File>>,
    started: Instant,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
    resume_dir: Option<PathBuf>,
    time_limit: Option<Duration>,
    activity: Arc<Activity>,
}

impl StageContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance: String,
        key: StageKey,
        params: Params,
        inputs: BTreeMap<String, Vec<InputArtifact>>,
        out_dir: PathBuf,
        threads: usize,
        log_file: Option<File>,
        sink: Arc<dyn ProgressSink>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        StageContext {
            instance,
            key,
            params,
            inputs,
            out_dir,
            threads: threads.max(1),
            log_file: Mutex::new(log_file),
            started: Instant::now(),
            sink,
            cancel,
            resume_dir: None,
            time_limit: None,
            activity: Arc::new(Activity::new()),
        }
    }

    /// Stops the stage after `limit` (from when the context was made): [`StageContext::is_cancelled`]
    /// turns true, so the processes the stage started are killed and its loops return.
    pub fn with_time_limit(mut self, limit: Option<Duration>) -> Self {
        self.time_limit = limit;
        self
    }

    /// Records signs of life into `activity` (the runner's watchdog reads it).
    pub fn with_activity(mut self, activity: Arc<Activity>) -> Self {
        self.activity = activity;
        self
    }

    /// The time limit, if the instance has one.
    pub fn time_limit(&self) -> Option<Duration> {
        self.time_limit
    }

    /// True once the time limit has passed.
    pub fn timed_out(&self) -> bool {
        self.time_limit
            .is_some_and(|limit| self.started.elapsed() >= limit)
    }

    /// Gives the stage a folder that outlives a failed or killed attempt of this instance (same
    /// key) and is removed once its artifact is committed: where long stages keep resume state.
    pub fn with_resume_dir(mut self, dir: PathBuf) -> Self {
        self.resume_dir = Some(dir);
        self
    }

    /// The resume folder (see [`StageContext::with_resume_dir`]), if the runner gave one.
    pub fn resume_dir(&self) -> Option<&Path> {
        self.resume_dir.as_deref()
    }

    /// The stable instance name, e.g. `ingest[dataset=rsna]`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn key(&self) -> &StageKey {
        &self.key
    }

    /// The resolved parameters (defaults filled in, types checked).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The empty directory the stage writes its files into. Nothing here is visible in the store
    /// until the stage returns `Ok` and the runner commits it.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Threads the stage may use for CPU work (`--jobs` divided among running stages).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The single artifact bound to input `name`.
    pub fn input(&self, name: &str) -> Result<&InputArtifact, StageError> {
        match self.inputs.get(name).map(Vec::as_slice) {
            Some([one]) => Ok(one),
            Some([]) | None => {
                Err(format!("{}: input `{name}` is not bound", self.instance).into())
            }
            Some(many) => Err(format!(
                "{}: input `{name}` has {} artifacts where one was expected",
                self.instance,
                many.len()
            )
            .into()),
        }
    }

    /// All artifacts bound to input `name` (empty when an optional input is absent).
    pub fn inputs(&self, name: &str) -> &[InputArtifact] {
        self.inputs.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn str_param(&self, name: &str) -> Result<&str, StageError> {
        self.param(name)?
            .as_str()
            .ok_or_else(|| self.type_err(name, "a string"))
    }

    pub fn i64_param(&self, name: &str) -> Result<i64, StageError> {
        self.param(name)?
            .as_i64()
            .ok_or_else(|| self.type_err(name, "an integer"))
    }

    pub fn f64_param(&self, name: &str) -> Result<f64, StageError> {
        self.param(name)?
            .as_f64()
            .ok_or_else(|| self.type_err(name, "a number"))
    }

    pub fn bool_param(&self, name: &str) -> Result<bool, StageError> {
        self.param(name)?
            .as_bool()
            .ok_or_else(|| self.type_err(name, "a boolean"))
    }

    pub fn param(&self, name: &str) -> Result<&Value, StageError> {
        self.params
            .get(name)
            .ok_or_else(|| format!("{}: parameter `{name}` is not set", self.instance).into())
    }

    fn type_err(&self, name: &str, want: &str) -> StageError {
        format!("{}: parameter `{name}` is not {want}", self.instance).into()
    }

    /// Writes a line to the stage's log (stored with the artifact) and forwards it to the display.
    pub fn log(&self, line: impl fmt::Display) {
        let line = line.to_string();
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(f) = self.log_file.lock().expect("log lock").as_mut() {
            let _ = writeln!(f, "[{secs:8.2}s] {line}");
        }
        self.activity.touch();
        self.sink.log(&self.instance, &line);
    }

    /// Reports progress: `done` of `total` `unit`s.
    pub fn progress(&self, done: u64, total: u64, unit: &str) {
        self.activity.touch();
        self.sink.progress(&self.instance, done, total, unit);
    }

    /// True once the user asked to stop (Ctrl-C, SIGTERM, SIGHUP) or the time limit has passed.
    /// Long loops should check it and return an error; processes started through
    /// [`crate::process`] are killed when it turns true.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.timed_out()
    }

    /// Returns an error when cancelled or timed out, for use with `?` inside loops.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(format!("{}: cancelled", self.instance).into())
        } else if let (true, Some(limit)) = (self.timed_out(), self.time_limit) {
            Err(format!(
                "{}: timed out after {}",
                self.instance,
                format_duration(limit)
            )
            .into())
        } else {
            Ok(())
        }
    }
}

/// The stage kinds a binary knows, by kind name.
#[derive(Default, Clone)]
pub struct StageRegistry {
    stages: BTreeMap<&'static str, Arc<dyn Stage>>,
}

impl StageRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, stage: Arc<dyn Stage>) {
        let kind = stage.kind();
        for p in stage.params() {
            assert!(
                !RUNNER_PARAMS.iter().any(|(name, _)| *name == p.name),
                "stage kind `{kind}` declares `{}`, a parameter the runner reserves",
                p.name
            );
        }
        assert!(
            self.stages.insert(kind, stage).is_none(),
            "stage kind `{kind}` registered twice"
        );
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.stages.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.stages.keys().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Stage>> {
        self.stages.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_the_way_people_write_them() {
        let d = |v: Value| parse_duration(&v);
        assert_eq!(d(Value::Int(90)), Ok(Duration::from_secs(90)));
        assert_eq!(d(Value::Float(0.5)), Ok(Duration::from_millis(500)));
        assert_eq!(d(Value::Str("1h30m".into())), Ok(Duration::from_secs(5400)));
        assert_eq!(d(Value::Str("2.5h".into())), Ok(Duration::from_secs(9000)));
        assert_eq!(
            d(Value::Str("250ms".into())),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(d(Value::Str("1d".into())), Ok(Duration::from_secs(86400)));
        for bad in ["", "soon", "10", "5 parsecs", "m", "1h-5m"] {
            assert!(d(Value::Str(bad.into())).is_err(), "{bad:?} accepted");
        }
        assert!(d(Value::Int(0)).is_err());
        assert!(d(Value::Int(-3)).is_err());
        assert!(d(Value::Bool(true)).is_err());
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(3605)), "1h0m5s");
    }

    #[test]
    fn a_time_limit_cancels_the_context_and_says_so() {
        let ctx = StageContext::new(
            "s".into(),
            StageKey::parse(&"ab".repeat(32)).unwrap(),
            Params::new(),
            BTreeMap::new(),
            PathBuf::from("/nonexistent"),
            1,
            None,
            Arc::new(NoProgress),
            Arc::new(AtomicBool::new(false)),
        )
        .with_time_limit(Some(Duration::from_millis(50)));
        assert!(!ctx.is_cancelled());
        std::thread::sleep(Duration::from_millis(80));
        assert!(ctx.is_cancelled() && ctx.timed_out());
        let err = ctx.check_cancelled().unwrap_err().to_string();
        assert_eq!(err, "s: timed out after 0.05s");
    }
}
