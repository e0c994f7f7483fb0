//! What a person sees while a run goes on: one progress line per running stage (items/s where the
//! stage reports counts) and a line per stage that starts, waits, goes silent or finishes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::ProgressSink;
use pipeline::{Outcome, RunEvent};

pub struct Display {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    verbose: bool,
    quiet: bool,
}

impl Display {
    pub fn new(verbose: bool, quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Display {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            verbose,
            quiet,
        }
    }

    /// A line above the bars (or plain stderr when bars are not drawn).
    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }

    pub fn finish(&self) {
        for (_, bar) in self.bars.lock().expect("bars").drain() {
            bar.finish_and_clear();
        }
    }
}

fn bar_style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{spinner} {prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})"
    } else {
        "{spinner} {prefix} {msg} {elapsed}"
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

impl ProgressSink for Display {
    fn progress(&self, instance: &str, done: u64, total: u64, unit: &str) {
        let bars = self.bars.lock().expect("bars");
        if let Some(bar) = bars.get(instance) {
            if total > 0 {
                if bar.length() != Some(total) {
                    bar.set_style(bar_style(true));
                    bar.set_length(total);
                }
                bar.set_position(done);
            }
            bar.set_message(unit.to_string());
        }
    }

    fn log(&self, instance: &str, line: &str) {
        if self.verbose {
            self.line(format!("  {instance}: {line}"));
        }
    }

    fn event(&self, event: &RunEvent) {
        match event {
            RunEvent::Planned { to_run, up_to_date } => {
                if *to_run > 0 {
                    self.line(format!("{to_run} to run, {up_to_date} up to date"));
                }
            }
            RunEvent::Started { instance, key } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(bar_style(false));
                bar.set_prefix(instance.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bars
                    .lock()
                    .expect("bars")
                    .insert(instance.clone(), bar);
                if self.verbose || self.multi.is_hidden() {
                    self.line(format!("start    {instance}  {}", key.short()));
                }
            }
            RunEvent::Submitted {
                instance,
                job,
                reused,
            } => {
                let how = if *reused {
                    "already queued as"
                } else {
                    "submitted as"
                };
                self.line(format!("queued   {instance}  ({how} slurm job {job})"));
            }
            RunEvent::Silent { instance, seconds } => {
                let text = format!(
                    "silent   {instance}: no progress or log line for {}",
                    pipeline::stage::format_duration(Duration::from_secs(*seconds as u64))
                );
                if let Some(bar) = self.bars.lock().expect("bars").get(instance) {
                    bar.set_message(format!(
                        "(silent for {})",
                        pipeline::stage::format_duration(Duration::from_secs(*seconds as u64))
                    ));
                }
                self.line(text);
            }
            RunEvent::Waiting { instance, owner } => {
                self.line(format!(
                    "waiting  {instance}: another runner ({owner}) is building it"
                ));
            }
            RunEvent::Finished { instance, outcome } => {
                if let Some(bar) = self.bars.lock().expect("bars").remove(instance) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                let text = match outcome {
                    Outcome::Ran { seconds } => format!("done     {instance}  ({seconds:.2}s)"),
                    Outcome::BuiltElsewhere => {
                        format!("done     {instance}  (built by another runner)")
                    }
                    Outcome::UpToDate => format!("skip     {instance}  (up to date)"),
                    Outcome::Failed { error, .. } => {
                        format!(
                            "FAILED   {instance}: {}",
                            error.lines().next().unwrap_or("")
                        )
                    }
                    Outcome::NotRun { because } => {
                        format!("not run  {instance}  (upstream {because} failed)")
                    }
                    Outcome::Cancelled => format!("cancel   {instance}"),
                    Outcome::Submitted { job } => format!("queued   {instance}  (slurm job {job})"),
                };
                self.line(text);
            }
        }
    }
}
