//! The encode loops' schedule: batches prepared (tokenised, or decoded and preprocessed on all
//! threads) ahead of the forward pass through a bounded prefetch queue, consumed in input order.
//!
//! On a GPU the producer thread prepares batch `i + 1 ..= i + depth` (into pinned host memory, see
//! [`LoopOptions::pin`]) while the device runs batch `i`, so a run costs the slower of the two, not
//! their sum. On the CPU both would compete for the same cores (libtorch's OpenMP threads degrade
//! badly when oversubscribed), so there each batch is prepared on all threads, then encoded.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use tch::Device;

use crate::error::{Error, Result};

/// Where the encode loops report: a stage context, or the terminal of `adaptor embed`.
pub trait Reporter: Sync {
    fn log(&self, line: &str);
    fn progress(&self, done: u64, total: u64, unit: &str);
    fn cancelled(&self) -> bool {
        false
    }
}

impl Reporter for pipeline::StageContext {
    fn log(&self, line: &str) {
        pipeline::StageContext::log(self, line)
    }

    fn progress(&self, done: u64, total: u64, unit: &str) {
        pipeline::StageContext::progress(self, done, total, unit)
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }
}

/// Batches the prefetch queue holds by default beside the one being prepared: enough to absorb
/// uneven decode times, small enough that host memory stays a few batches.
pub const DEFAULT_PREFETCH: usize = 2;

/// Loop settings shared by both modalities.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    pub batch_size: usize,
    /// Threads for decoding/tokenising and for libtorch's intra-op parallelism on the CPU.
    pub threads: usize,
    /// Noun for progress (`texts`, `images`).
    pub unit: &'static str,
    /// Prepare the next batches on another thread while the forward pass runs. Right when the
    /// forward pass runs on a GPU; on the CPU both would compete for the same cores, so there each
    /// batch is prepared on all threads, then encoded on all threads.
    pub overlap: bool,
    /// Ready batches the queue holds while overlapping (at least 1).
    pub prefetch: usize,
    /// Where the forward pass runs: batches are copied there from pinned host memory without
    /// blocking when it is a CUDA device.
    pub device: Device,
}

impl LoopOptions {
    /// Overlap exactly when the backbone is not on the CPU.
    pub fn new(batch_size: usize, threads: usize, unit: &'static str, device: Device) -> Self {
        LoopOptions {
            batch_size,
            threads,
            unit,
            overlap: device != Device::Cpu,
            prefetch: DEFAULT_PREFETCH,
            device,
        }
    }

    /// Whether batches are prepared in page-locked (pinned) host memory: on a CUDA device only
    /// (pinning is a no-op elsewhere), so that the host-to-device copy can run asynchronously.
    pub fn pin(&self) -> bool {
        matches!(self.device, Device::Cuda(_))
    }
}

/// Progress over the rows of a whole run, which may go through [`pipelined`] in several windows
/// (the stages feed the loop a window of records at a time): reported as rows done of the run's
/// total, and logged every 10 s and at the end. It also keeps the loop's thread pool, built on the
/// first window, so that windows reuse its threads.
pub(crate) struct Meter {
    pool: Option<rayon::ThreadPool>,
    total: usize,
    before: usize,
    unit: &'static str,
    started: Instant,
    last_log: Instant,
}

impl Meter {
    /// Reports 0 of `total`.
    pub(crate) fn start(total: usize, unit: &'static str, rep: &dyn Reporter) -> Self {
        rep.progress(0, total as u64, unit);
        Meter {
            pool: None,
            total,
            before: 0,
            unit,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Rows `..end` of the current window are done.
    fn after(&mut self, rep: &dyn Reporter, end: usize) {
        let (done, total, unit) = (self.before + end, self.total, self.unit);
        rep.progress(done as u64, total as u64, unit);
        if self.last_log.elapsed().as_secs_f64() >= 10.0 || done == total {
            let secs = self.started.elapsed().as_secs_f64();
            rep.log(&format!(
                "encoded {done}/{total} {unit} in {secs:.1} s ({:.1} {unit}/s)",
                done as f64 / secs.max(1e-9),
            ));
            self.last_log = Instant::now();
        }
    }
}

/// Runs `prepare` for each chunk of `chunk` rows of a window of `rows` rows, at most
/// `opts.prefetch` ready chunks ahead of `consume` (on a producer thread when `opts.overlap`), and
/// `consume` in row order; `meter` counts the window's rows after those of earlier windows. Stops
/// at the first error of either side or when the reporter is cancelled; the producer then stops
/// before its next chunk.
pub(crate) fn pipelined<P: Send>(
    rows: usize,
    chunk: usize,
    opts: &LoopOptions,
    rep: &dyn Reporter,
    meter: &mut Meter,
    prepare: impl Fn(Range<usize>) -> Result<P> + Sync,
    mut consume: impl FnMut(Range<usize>, P) -> Result<()>,
) -> Result<()> {
    let bs = chunk.max(1);
    let ranges: Vec<Range<usize>> = (0..rows)
        .step_by(bs)
        .map(|s| s..(s + bs).min(rows))
        .collect();
    if meter.pool.is_none() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .build()
            .map_err(|e| Error::Runtime {
                what: format!("cannot start {} threads", opts.threads),
                message: e.to_string(),
            })?;
        meter.pool = Some(pool);
    }
    let pool = meter.pool.take().expect("built above");
    let result = run_chunks(
        ranges,
        opts,
        rep,
        &pool,
        |end| meter.after(rep, end),
        prepare,
        &mut consume,
    );
    meter.before += rows;
    meter.pool = Some(pool);
    result
}

/// [`pipelined`]'s loop over its chunks; `after(end)` once a chunk ending at `end` is consumed.
fn run_chunks<P: Send>(
    ranges: Vec<Range<usize>>,
    opts: &LoopOptions,
    rep: &dyn Reporter,
    pool: &rayon::ThreadPool,
    mut after: impl FnMut(usize),
    prepare: impl Fn(Range<usize>) -> Result<P> + Sync,
    consume: &mut impl FnMut(Range<usize>, P) -> Result<()>,
) -> Result<()> {
    if !opts.overlap {
        for r in ranges {
            if rep.cancelled() {
                return Err(Error::Cancelled);
            }
            let end = r.end;
            let p = pool.install(|| prepare(r.clone()))?;
            consume(r, p)?;
            after(end);
        }
        return Ok(());
    }
    // Set when the consumer leaves (done, failed or cancelled): the producer starts no new chunk.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<(Range<usize>, Result<P>)>(opts.prefetch.max(1));
        let (prepare, stop) = (&prepare, &stop);
        s.spawn(move || {
            for r in ranges {
                if stop.load(Ordering::Acquire) || rep.cancelled() {
                    break;
                }
                let p = pool.install(|| prepare(r.clone()));
                let failed = p.is_err();
                if tx.send((r, p)).is_err() || failed {
                    break;
                }
            }
        });
        let consumed = (|| {
            for (r, p) in rx.iter() {
                if rep.cancelled() {
                    return Err(Error::Cancelled);
                }
                let end = r.end;
                consume(r, p?)?;
                after(end);
            }
            if rep.cancelled() {
                return Err(Error::Cancelled);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Release);
        // Dropping the receiver fails the producer's next send, which ends it.
        drop(rx);
        consumed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log {
        progress: Mutex<Vec<(u64, u64)>>,
        cancel_at: Option<u64>,
    }

    impl Reporter for Log {
        fn log(&self, _: &str) {}
        fn progress(&self, done: u64, total: u64, _: &str) {
            self.progress.lock().unwrap().push((done, total));
        }
        fn cancelled(&self) -> bool {
            let done = self.progress.lock().unwrap().last().map_or(0, |p| p.0);
            self.cancel_at.is_some_and(|at| done >= at)
        }
    }

    fn options(overlap: bool, prefetch: usize) -> LoopOptions {
        LoopOptions {
            batch_size: 3,
            threads: 2,
            unit: "items",
            overlap,
            prefetch,
            device: Device::Cpu,
        }
    }

    /// The loop's result, the chunks consumed and the progress reported.
    type Outcome = (Result<()>, Vec<Range<usize>>, Vec<(u64, u64)>);

    fn run(overlap: bool, fail_at: Option<usize>) -> Outcome {
        let rep = Log::default();
        let mut seen = Vec::new();
        let mut meter = Meter::start(10, "items", &rep);
        let r = pipelined(
            10,
            3,
            &options(overlap, 2),
            &rep,
            &mut meter,
            |r| match fail_at {
                Some(f) if r.contains(&f) => Err(Error::parameter("row", f, "is bad")),
                _ => Ok(r.clone()),
            },
            |r, p| {
                assert_eq!(r, p);
                seen.push(r);
                Ok(())
            },
        );
        (r, seen, rep.progress.into_inner().unwrap())
    }

    #[test]
    fn both_loops_consume_every_chunk_in_order() {
        for overlap in [false, true] {
            let (r, seen, progress) = run(overlap, None);
            r.unwrap();
            assert_eq!(seen, [0..3, 3..6, 6..9, 9..10]);
            assert_eq!(progress, [(0, 10), (3, 10), (6, 10), (9, 10), (10, 10)]);
        }
    }

    /// Windows fed one after another through one meter report the run's progress, not the
    /// window's, and log once at the end of the run.
    #[test]
    fn windows_report_progress_of_the_whole_run() {
        #[derive(Default)]
        struct Lines(Mutex<Vec<String>>, Log);
        impl Reporter for Lines {
            fn log(&self, line: &str) {
                self.0.lock().unwrap().push(line.to_string());
            }
            fn progress(&self, done: u64, total: u64, unit: &str) {
                self.1.progress(done, total, unit)
            }
        }
        for overlap in [false, true] {
            let rep = Lines::default();
            let mut meter = Meter::start(10, "items", &rep);
            for rows in [6, 4] {
                pipelined(
                    rows,
                    3,
                    &options(overlap, 2),
                    &rep,
                    &mut meter,
                    Ok,
                    |_, _| Ok(()),
                )
                .unwrap();
            }
            let progress = rep.1.progress.into_inner().unwrap();
            assert_eq!(progress, [(0, 10), (3, 10), (6, 10), (9, 10), (10, 10)]);
            let lines = rep.0.into_inner().unwrap();
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(lines[0].starts_with("encoded 10/10 items in "), "{lines:?}");
        }
    }

    #[test]
    fn both_loops_stop_at_the_first_failed_chunk() {
        for overlap in [false, true] {
            let (r, seen, _) = run(overlap, Some(7));
            assert_eq!(r.unwrap_err().to_string(), "row 7 is bad");
            assert_eq!(seen, [0..3, 3..6], "overlap {overlap}");
        }
    }

    /// A fast producer never runs more than the queue's depth ahead of a slow consumer: at most
    /// `depth` chunks wait in the queue and one more is in the producer's hands.
    #[test]
    fn the_queue_is_bounded_and_keeps_order_with_a_slow_consumer() {
        for depth in [1, 3] {
            let (prepared, consumed, most_ahead) = (
                AtomicUsize::new(0),
                AtomicUsize::new(0),
                AtomicUsize::new(0),
            );
            let mut seen = Vec::new();
            let rep = Log::default();
            pipelined(
                40,
                1,
                &options(true, depth),
                &rep,
                &mut Meter::start(40, "items", &rep),
                |r| {
                    let ahead = prepared.fetch_add(1, Ordering::SeqCst) + 1
                        - consumed.load(Ordering::SeqCst);
                    most_ahead.fetch_max(ahead, Ordering::SeqCst);
                    Ok(r.start)
                },
                |_, i| {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    seen.push(i);
                    consumed.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen, (0..40).collect::<Vec<_>>());
            let most = most_ahead.load(Ordering::SeqCst);
            // Ready in the queue (depth), being prepared (1), received but not yet counted (1).
            assert!(most <= depth + 2, "depth {depth}: {most} chunks ahead");
            assert!(
                most >= depth,
                "depth {depth}: the producer never ran ahead ({most})"
            );
        }
    }

    /// Cancelling (Ctrl-C, a time limit) ends the loop with `Cancelled` and the producer soon after:
    /// it prepares at most the queue's depth and one more chunk past the cancelled point.
    #[test]
    fn cancelling_stops_consumer_and_producer() {
        for overlap in [false, true] {
            let rep = Log {
                cancel_at: Some(6),
                ..Log::default()
            };
            let prepared = AtomicUsize::new(0);
            let mut seen = Vec::new();
            let r = pipelined(
                300,
                3,
                &options(overlap, 2),
                &rep,
                &mut Meter::start(300, "items", &rep),
                |r| {
                    prepared.fetch_add(1, Ordering::SeqCst);
                    Ok(r)
                },
                |r, _| {
                    seen.push(r);
                    Ok(())
                },
            );
            assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
            assert_eq!(seen, [0..3, 3..6], "overlap {overlap}");
            let n = prepared.load(Ordering::SeqCst);
            assert!(
                n <= 2 + 2 + 1,
                "overlap {overlap}: {n} chunks prepared of 100"
            );
        }
    }

    /// A failing consumer (a table write) ends the producer too.
    #[test]
    fn a_consumer_error_stops_the_producer() {
        let prepared = AtomicUsize::new(0);
        let rep = Log::default();
        let r = pipelined(
            300,
            3,
            &options(true, 2),
            &rep,
            &mut Meter::start(300, "items", &rep),
            |r| {
                prepared.fetch_add(1, Ordering::SeqCst);
                Ok(r)
            },
            |r, _| match r.start {
                3 => Err(Error::parameter("row", 3, "cannot be written")),
                _ => Ok(()),
            },
        );
        assert_eq!(r.unwrap_err().to_string(), "row 3 cannot be written");
        assert!(prepared.load(Ordering::SeqCst) <= 2 + 2 + 1);
    }
}
