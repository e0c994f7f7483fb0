//! What running stages and executors report to the display: progress and log lines
//! ([`ProgressSink`]), scheduling events ([`RunEvent`]) and how each instance ended ([`Outcome`]).

use crate::key::StageKey;

/// Receives progress from running stages; the binary draws it. Implementations must be cheap.
pub trait ProgressSink: Send + Sync {
    /// `done` of `total` `unit`s (e.g. images) for `instance`; `total == 0` means unknown.
    fn progress(&self, instance: &str, done: u64, total: u64, unit: &str);
    /// A log line, already written to the stage's log file.
    fn log(&self, instance: &str, line: &str);
    /// A scheduling event (planned, started, finished, waiting on another runner).
    fn event(&self, _event: &RunEvent) {}
}

/// Scheduling events, for the display.
#[derive(Debug, Clone)]
pub enum RunEvent {
    Planned {
        to_run: usize,
        up_to_date: usize,
    },
    Started {
        instance: String,
        key: StageKey,
    },
    Finished {
        instance: String,
        outcome: Outcome,
    },
    Waiting {
        instance: String,
        owner: String,
    },
    /// A running stage sent no progress report or log line for longer than its watchdog
    /// interval (`watchdog`). Reported once per silence; the stage is not stopped.
    Silent {
        instance: String,
        seconds: f64,
    },
    /// Handed to a cluster scheduler (`reused`: a job another run had already submitted).
    Submitted {
        instance: String,
        job: String,
        reused: bool,
    },
}

/// How one instance ended in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    UpToDate,
    Ran {
        seconds: f64,
    },
    /// Another runner completed it while we waited.
    BuiltElsewhere,
    Failed {
        error: String,
        log: String,
    },
    /// Submitted to a cluster scheduler and not followed (`--detach`).
    Submitted {
        job: String,
    },
    /// An upstream instance failed.
    NotRun {
        because: String,
    },
    Cancelled,
}

/// A sink that drops everything (library use, tests).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _: &str, _: u64, _: u64, _: &str) {}
    fn log(&self, _: &str, _: &str) {}
}
