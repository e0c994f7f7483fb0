//! What a stage sees while it runs ([`StageContext`]): its parameters, its inputs as local
//! folders, its output folder, a log, progress, cancellation and its time limit.

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

use super::{format_duration, InputArtifact, ProgressSink, RemoteInput, StageError};

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
    /// The largest peak RSS (KiB) of a process the stage started; 0 while none has ended.
    peak_rss_kib: AtomicU64,
    log_file: Mutex<Option<File>>,
    started: Instant,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
    resume_dir: Option<PathBuf>,
    time_limit: Option<Duration>,
    activity: Arc<Activity>,
    /// Inputs read from a remote store, by their `InputArtifact::path`.
    remote: BTreeMap<PathBuf, RemoteInput>,
    /// Settings for remote stores (`AWS_*` as name, value), given by the binary; secrets.
    remote_access: Vec<(String, String)>,
    memory: u64,
    temp_dir: Option<PathBuf>,
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
            peak_rss_kib: AtomicU64::new(0),
            log_file: Mutex::new(log_file),
            started: Instant::now(),
            sink,
            cancel,
            resume_dir: None,
            time_limit: None,
            activity: Arc::new(Activity::new()),
            remote: BTreeMap::new(),
            remote_access: Vec::new(),
            memory: super::DEFAULT_MEMORY,
            temp_dir: None,
        }
    }

    /// Marks the input at `path` as living on a remote store (no local copy there).
    pub fn with_remote(mut self, path: PathBuf, remote: RemoteInput) -> Self {
        self.remote.insert(path, remote);
        self
    }

    /// Where `input` lives when it is read straight from a remote store; `None` for a local folder.
    pub fn remote(&self, input: &InputArtifact) -> Option<&RemoteInput> {
        self.remote.get(&input.path)
    }

    /// The settings a stage opens remote stores with (`AWS_*`: credentials, endpoint), which the
    /// binary collected from its environment. Secrets: never logged or hashed.
    pub fn with_remote_access(mut self, settings: Vec<(String, String)>) -> Self {
        self.remote_access = settings;
        self
    }

    /// See [`StageContext::with_remote_access`].
    pub fn remote_access(&self) -> &[(String, String)] {
        &self.remote_access
    }

    /// Gives the stage a memory budget of `bytes` (the runner parameter `memory`).
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }

    /// The memory budget in bytes that the stage's streaming readers and caches keep within (the
    /// runner parameter `memory`, or the runner's share of the machine). It never changes what a
    /// stage computes, only whether it holds its data in memory or in scratch files.
    pub fn memory(&self) -> u64 {
        self.memory
    }

    /// Gives the stage a scratch folder (see [`StageContext::temp_dir`]).
    pub fn with_temp_dir(mut self, dir: PathBuf) -> Self {
        self.temp_dir = Some(dir);
        self
    }

    /// A folder for scratch files (row files of tables larger than the budget), beside the output
    /// folder and removed by the runner when the stage returns; never part of the artifact. `None`
    /// when the runner gave none (the stages then use a `tmp` folder beside their output folder).
    pub fn temp_dir(&self) -> Option<&Path> {
        self.temp_dir.as_deref()
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
        self.typed_param(name, "a string", Value::as_str)
    }

    pub fn i64_param(&self, name: &str) -> Result<i64, StageError> {
        self.typed_param(name, "an integer", Value::as_i64)
    }

    pub fn f64_param(&self, name: &str) -> Result<f64, StageError> {
        self.typed_param(name, "a number", Value::as_f64)
    }

    pub fn bool_param(&self, name: &str) -> Result<bool, StageError> {
        self.typed_param(name, "a boolean", Value::as_bool)
    }

    /// Parameter `name` read by `read`; an error names the instance, the parameter and `want`.
    fn typed_param<'a, T>(
        &'a self,
        name: &str,
        want: &str,
        read: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, StageError> {
        read(self.param(name)?).ok_or_else(|| self.type_err(name, want))
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

    /// Records the peak resident memory (KiB) of a process the stage started, once it ended.
    pub fn record_peak_rss(&self, kib: u64) {
        self.peak_rss_kib.fetch_max(kib, Ordering::Relaxed);
    }

    /// The largest peak RSS recorded (KiB), if the stage started a process.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        Some(self.peak_rss_kib.load(Ordering::Relaxed)).filter(|k| *k > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::NoProgress;

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
