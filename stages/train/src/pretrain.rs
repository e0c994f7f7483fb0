//! Contrastive pre-training of the Adaptor on cached embedding pairs ([`fit`]): AdamW with a per-step linear warm-up/decay, a fresh shuffle every epoch,
//! validation loss and retrieval recall each epoch, early stopping, the best checkpoint kept,
//! and a resume state written at every epoch end.
//!
//! Determinism: initialisation and shuffles come from [`crate::rng`]; dropout uses libtorch's
//! global generator, re-seeded from `(seed, epoch)` at the start of every epoch, so resuming at
//! an epoch boundary needs no generator state and reaches the same weights as an uninterrupted
//! run. A process-wide lock keeps two trainings in one process from interleaving draws. On a
//! CPU, results are bit-identical for the same seed and thread count.

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::TrainConfig;
use crate::data::PairSource;
use crate::error::{io_err, Error, Result};
use crate::metrics::{
    retrieval_recall, write_epoch_metrics, write_step_metrics, EpochMetrics, Recall, StepMetrics,
};
use crate::model::{Adaptor, CheckpointInfo};
use crate::nn::Mode;
use crate::optim::{AdamW, DecayPolicy, LinearSchedule};
use crate::params::{read_safetensors, write_safetensors};
use crate::rng::{derive_seed, original_order, permutation};

/// The kept checkpoint (lowest validation loss), with `adaptor.json` beside it.
pub const BEST_CHECKPOINT: &str = "adaptor.safetensors";
/// The weights after the last epoch run, with `last.json`.
pub const LAST_CHECKPOINT: &str = "last.safetensors";
pub const STEP_METRICS: &str = "metrics_steps.parquet";
pub const EPOCH_METRICS: &str = "metrics_epochs.parquet";
pub const CURVE: &str = "training_curve.png";
pub const RETRIEVAL: &str = "retrieval.json";
pub const REPORT: &str = "report.json";
/// Resume state (default folder under the output folder): `state.json` pointing at
/// `epoch-NNNN.safetensors` (model + AdamW moments).
pub const RESUME_DIR: &str = "resume";

const RESUME_FORMAT: &str = "adaptor-resume/1";

pub(crate) static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Holds libtorch's process-global generator for the caller (the training loops take it for
/// their whole run): hold it between `tch::manual_seed` and the draws that must follow it. Not
/// re-entrant: release it before calling [`fit`] or [`crate::train_head`].
pub fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives progress; returning `Break` stops training (the last epoch's resume state stays).
pub trait Observer {
    fn on_step(&mut self, _m: &StepMetrics) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    fn on_epoch(&mut self, _m: &EpochMetrics) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Human-readable lines (resume, early stop).
    fn log(&mut self, _line: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All `epochs` ran.
    Completed,
    /// `patience` epochs without improvement.
    EarlyStopped,
    /// The observer asked to stop; outputs other than the resume state were not written.
    Interrupted,
}

/// What [`fit`] returns (and writes as `report.json` when it finishes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub stop: StopReason,
    pub trainable_params: i64,
    pub train_pairs: usize,
    pub valid_pairs: usize,
    pub steps_per_epoch: u64,
    pub epochs_completed: usize,
    pub steps: u64,
    /// Validation loss of the initial weights, then of the best and the last epoch.
    pub initial_val_loss: f64,
    pub best_epoch: Option<usize>,
    pub best_val_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    /// Recall of the initial weights and of the kept (best) checkpoint on the validation split.
    pub initial_recall: Recall,
    pub best_recall: Option<Recall>,
    /// The epoch the run resumed after, if it did.
    pub resumed_after_epoch: Option<usize>,
    /// libtorch's intra-op threads: on a CPU, bit-identical results need the same count.
    pub threads: i32,
    pub device: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeState {
    format: String,
    config: TrainConfig,
    epochs_done: usize,
    step: u64,
    best_val_loss: Option<f64>,
    best_epoch: Option<usize>,
    epochs_without_improvement: usize,
    stopped_early: bool,
    initial_val_loss: f64,
    initial_recall: Recall,
    seconds: f64,
    weights: String,
    step_metrics: Vec<StepMetrics>,
    epoch_metrics: Vec<EpochMetrics>,
}

/// Trains an Adaptor on `train` pairs, validating on `valid` each epoch, writing into `out_dir`:
/// `adaptor.safetensors` + `adaptor.json` (best validation loss), `last.safetensors` + `last.json`,
/// `metrics_steps.parquet`, `metrics_epochs.parquet`, `training_curve.png`, `retrieval.json`,
/// `report.json`. If `out_dir/resume/state.json` exists (a killed run), training continues from
/// its last completed epoch; the configuration must be the same. The resume folder is removed
/// when the run finishes.
pub fn fit(
    cfg: &TrainConfig,
    train: &dyn PairSource,
    valid: &dyn PairSource,
    out_dir: &Path,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    fit_resumable(
        cfg,
        train,
        valid,
        out_dir,
        &out_dir.join(RESUME_DIR),
        observer,
    )
}

/// [`fit`] with the resume state in `resume_dir` (e.g. a folder that outlives a stage's
/// staging output folder, so a killed stage resumes when it is run again).
pub fn fit_resumable(
    cfg: &TrainConfig,
    train: &dyn PairSource,
    valid: &dyn PairSource,
    out_dir: &Path,
    resume_dir: &Path,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    cfg.validate()?;
    let device = cfg.device()?;
    check_source(cfg, train, "train")?;
    check_source(cfg, valid, "valid")?;
    if valid.is_empty() {
        return Err(Error::Data("the validation split is empty".into()));
    }
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    fs::create_dir_all(resume_dir).map_err(io_err(resume_dir))?;
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let clock = Instant::now();

    let model = Adaptor::new(&cfg.model, device, derive_seed(cfg.seed, "init", 0))?;
    let policy = if cfg.original_weight_decay {
        DecayPolicy::All
    } else {
        DecayPolicy::WeightsOnly
    };
    let mut opt = AdamW::new(model.params(), cfg.betas, cfg.eps, cfg.weight_decay, policy);
    let mode = Mode::new(true, cfg.precision);

    let n = train.len();
    let steps_per_epoch = if cfg.drop_last {
        n / cfg.batch_size
    } else {
        n.div_ceil(cfg.batch_size)
    } as u64;
    if steps_per_epoch == 0 {
        return Err(Error::Data(format!(
            "{n} training pairs make no batch of {}",
            cfg.batch_size
        )));
    }
    let schedule = LinearSchedule::new(steps_per_epoch * cfg.epochs as u64, cfg.warmup_fraction);

    let mut st = match load_resume(resume_dir, cfg, &model, &mut opt)? {
        Some(st) => {
            observer.log(&format!(
                "resuming after epoch {} (step {})",
                st.epochs_done, st.step
            ));
            st
        }
        None => {
            let (val, recall) = validate(&model, cfg, valid, device)?;
            ResumeState {
                format: RESUME_FORMAT.into(),
                config: cfg.clone(),
                epochs_done: 0,
                step: 0,
                best_val_loss: None,
                best_epoch: None,
                epochs_without_improvement: 0,
                stopped_early: false,
                initial_val_loss: val,
                initial_recall: recall,
                seconds: 0.0,
                weights: String::new(),
                step_metrics: Vec::new(),
                epoch_metrics: Vec::new(),
            }
        }
    };
    let run = Run {
        train,
        valid,
        device,
        steps_per_epoch,
        resumed_after_epoch: (st.epochs_done > 0).then_some(st.epochs_done),
    };
    let seconds_before = st.seconds;
    let elapsed = |c: &Instant| seconds_before + c.elapsed().as_secs_f64();

    while st.epochs_done < cfg.epochs && !st.stopped_early {
        let epoch = st.epochs_done; // 0-based
        tch::manual_seed(derive_seed(cfg.seed, "dropout", epoch as u64) as i64);
        let order: Vec<i64> = if cfg.original_no_shuffle {
            original_order(n)
        } else {
            permutation(derive_seed(cfg.seed, "shuffle", epoch as u64), n)
        };
        let (mut loss_sum, mut seen, mut lr) = (0.0, 0usize, 0.0);
        for chunk in order.chunks(cfg.batch_size).take(steps_per_epoch as usize) {
            // The original also steps its scheduler inside `training_step` (before Lightning's
            // optimizer step) and once per epoch (reference A.1, G.8).
            let sched_step = if cfg.original_scheduler_stepping {
                st.step + 1 + epoch as u64
            } else {
                st.step
            };
            lr = cfg.lr * schedule.factor(sched_step);
            let batch = train.batch(chunk, device)?;
            opt.zero_grad();
            let out = model.forward(&batch, mode)?;
            out.loss.backward();
            opt.step(lr);
            st.step += 1;
            let loss = out.loss.double_value(&[]);
            if !loss.is_finite() {
                return Err(Error::NonFiniteLoss {
                    loss,
                    step: st.step,
                    epoch: epoch + 1,
                });
            }
            loss_sum += loss * chunk.len() as f64;
            seen += chunk.len();
            let m = StepMetrics {
                epoch: epoch + 1,
                step: st.step,
                lr,
                loss,
                contrastive: out.contrastive.double_value(&[]),
                itm: out.itm.as_ref().map(|t| t.double_value(&[])),
                logit_scale: model.logit_scale().double_value(&[]),
                batch_size: chunk.len(),
                seconds: elapsed(&clock),
            };
            let flow = observer.on_step(&m);
            st.step_metrics.push(m);
            if flow.is_break() {
                return Ok(run.report(&st, &model, StopReason::Interrupted, None, elapsed(&clock)));
            }
        }

        let (val_loss, recall) = validate(&model, cfg, valid, device)?;
        let improved = st
            .best_val_loss
            .is_none_or(|b| val_loss < b - cfg.min_delta);
        if improved {
            st.best_val_loss = Some(val_loss);
            st.best_epoch = Some(epoch + 1);
            st.epochs_without_improvement = 0;
            let info = CheckpointInfo {
                train: Some(cfg.clone()),
                epoch: Some(epoch + 1),
                step: Some(st.step),
                val_loss: Some(val_loss),
                ..CheckpointInfo::new(cfg.model.clone())
            };
            model.save(&out_dir.join(BEST_CHECKPOINT), &info)?;
        } else {
            st.epochs_without_improvement += 1;
        }
        st.epochs_done = epoch + 1;
        st.stopped_early = cfg
            .patience
            .is_some_and(|p| st.epochs_without_improvement >= p);
        st.seconds = elapsed(&clock);
        let m = EpochMetrics {
            epoch: epoch + 1,
            steps: st.step,
            train_loss: loss_sum / seen.max(1) as f64,
            val_loss,
            lr,
            logit_scale: model.logit_scale().double_value(&[]),
            recall,
            improved,
            seconds: st.seconds,
        };
        st.epoch_metrics.push(m.clone());
        save_resume(resume_dir, &mut st, &model, &opt)?;
        if st.stopped_early {
            observer.log(&format!(
                "early stop after epoch {}: no improvement over {:.6} for {} epochs",
                epoch + 1,
                st.best_val_loss.unwrap_or(f64::NAN),
                st.epochs_without_improvement
            ));
        }
        if observer.on_epoch(&m).is_break() {
            return Ok(run.report(&st, &model, StopReason::Interrupted, None, elapsed(&clock)));
        }
    }

    finish(cfg, st, &model, &run, out_dir, resume_dir, elapsed(&clock))
}

fn check_source(cfg: &TrainConfig, src: &dyn PairSource, what: &str) -> Result<()> {
    let (dv, dt) = src.dims();
    if dv != cfg.model.vision_dim || dt != cfg.model.text_dim {
        return Err(Error::Data(format!(
            "{what} pairs have widths (image {dv}, text {dt}); the model expects (image {}, text {})",
            cfg.model.vision_dim, cfg.model.text_dim
        )));
    }
    Ok(())
}

/// Mean validation loss (batches of `batch_size` in row order, weighted by batch size) and
/// retrieval recall over the whole split, in evaluation mode.
pub fn validate(
    model: &Adaptor,
    cfg: &TrainConfig,
    valid: &dyn PairSource,
    device: Device,
) -> Result<(f64, Recall)> {
    let _guard = tch::no_grad_guard();
    let mode = Mode::new(false, cfg.precision);
    let rows: Vec<i64> = (0..valid.len() as i64).collect();
    let (mut sum, mut images, mut texts) = (0.0, Vec::new(), Vec::new());
    for chunk in rows.chunks(cfg.batch_size) {
        let out = model.forward(&valid.batch(chunk, device)?, mode)?;
        sum += out.loss.double_value(&[]) * chunk.len() as f64;
        images.push(out.image);
        texts.push(out.text);
    }
    let recall = retrieval_recall(&Tensor::cat(&images, 0), &Tensor::cat(&texts, 0));
    Ok((sum / valid.len() as f64, recall))
}

fn resume_paths(resume_dir: &Path) -> (PathBuf, PathBuf) {
    (resume_dir.join("state.json"), resume_dir.to_path_buf())
}

fn save_resume(
    resume_dir: &Path,
    st: &mut ResumeState,
    model: &Adaptor,
    opt: &AdamW,
) -> Result<()> {
    let (state_path, dir) = resume_paths(resume_dir);
    let previous = std::mem::take(&mut st.weights);
    st.weights = format!("epoch-{:04}.safetensors", st.epochs_done);
    let mut tensors: Vec<(String, Tensor)> = model
        .params()
        .snapshot()
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t))
        .collect();
    tensors.extend(opt.state_tensors());
    // Weights first, then the pointer: a kill in between leaves the previous state valid.
    write_safetensors(&dir.join(&st.weights), &tensors, &Default::default())?;
    let json = serde_json::to_string(&st).expect("resume state serialises");
    let tmp = state_path.with_extension("json.tmp");
    fs::write(&tmp, json).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &state_path).map_err(io_err(&state_path))?;
    if !previous.is_empty() && previous != st.weights {
        let _ = fs::remove_file(dir.join(previous));
    }
    Ok(())
}

fn load_resume(
    resume_dir: &Path,
    cfg: &TrainConfig,
    model: &Adaptor,
    opt: &mut AdamW,
) -> Result<Option<ResumeState>> {
    let (state_path, dir) = resume_paths(resume_dir);
    if !state_path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let st: ResumeState = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: state_path.clone(),
        source: e,
    })?;
    let bad = |m: String| Error::Checkpoint {
        path: state_path.clone(),
        message: m,
    };
    if st.format != RESUME_FORMAT {
        return Err(bad(format!(
            "format `{}`, expected `{RESUME_FORMAT}`",
            st.format
        )));
    }
    if &st.config != cfg {
        return Err(bad(
            "the resume state belongs to a run with a different configuration; remove the `resume` folder to start over".into(),
        ));
    }
    let weights = dir.join(&st.weights);
    let tensors = read_safetensors(&weights)?;
    let (model_t, opt_t): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(n, _)| n.starts_with("model."));
    let model_t: Vec<(String, Tensor)> = model_t
        .into_iter()
        .map(|(n, t)| (n["model.".len()..].to_string(), t))
        .collect();
    model.params().load(&model_t, &weights)?;
    opt.load_state(&opt_t, st.step)
        .map_err(|m| Error::Checkpoint {
            path: weights.clone(),
            message: m,
        })?;
    Ok(Some(st))
}

/// What stays the same for a whole run (the pairs, the device, the steps per epoch and the epoch
/// resumed after), for the final outputs and [`TrainReport`].
struct Run<'a> {
    train: &'a dyn PairSource,
    valid: &'a dyn PairSource,
    device: Device,
    steps_per_epoch: u64,
    resumed_after_epoch: Option<usize>,
}

impl Run<'_> {
    /// The report of a run at state `st` (interrupted: no recall of the kept checkpoint).
    fn report(
        &self,
        st: &ResumeState,
        model: &Adaptor,
        stop: StopReason,
        best_recall: Option<Recall>,
        seconds: f64,
    ) -> TrainReport {
        TrainReport {
            stop,
            trainable_params: model.num_trainable_params(),
            train_pairs: self.train.len(),
            valid_pairs: self.valid.len(),
            steps_per_epoch: self.steps_per_epoch,
            epochs_completed: st.epochs_done,
            steps: st.step,
            initial_val_loss: st.initial_val_loss,
            best_epoch: st.best_epoch,
            best_val_loss: st.best_val_loss,
            last_val_loss: st.epoch_metrics.last().map(|e| e.val_loss),
            initial_recall: st.initial_recall,
            best_recall,
            resumed_after_epoch: self.resumed_after_epoch,
            threads: tch::get_num_threads(),
            device: st.config.device.clone(),
            seconds,
        }
    }
}

fn finish(
    cfg: &TrainConfig,
    st: ResumeState,
    model: &Adaptor,
    run: &Run,
    out_dir: &Path,
    resume_dir: &Path,
    seconds: f64,
) -> Result<TrainReport> {
    let info = CheckpointInfo {
        train: Some(cfg.clone()),
        epoch: Some(st.epochs_done),
        step: Some(st.step),
        val_loss: st.epoch_metrics.last().map(|e| e.val_loss),
        ..CheckpointInfo::new(cfg.model.clone())
    };
    model.save(&out_dir.join(LAST_CHECKPOINT), &info)?;
    // Recall of the kept checkpoint (it is the last one's when the last epoch was the best).
    let (best, _) = Adaptor::from_checkpoint(&out_dir.join(BEST_CHECKPOINT), run.device)?;
    let (_, best_recall) = validate(&best, cfg, run.valid, run.device)?;
    let recall_json = serde_json::json!({
        "checkpoint": BEST_CHECKPOINT,
        "epoch": st.best_epoch,
        "split": "valid",
        "recall": best_recall,
        "initial_recall": st.initial_recall,
    });
    write_json(&out_dir.join(RETRIEVAL), &recall_json)?;
    write_step_metrics(&out_dir.join(STEP_METRICS), &st.step_metrics)?;
    write_epoch_metrics(&out_dir.join(EPOCH_METRICS), &st.epoch_metrics)?;
    let title = format!(
        "Adaptor ({:?}) · {} train / {} valid pairs · batch {} · lr {:e}",
        cfg.model.variant,
        run.train.len(),
        run.valid.len(),
        cfg.batch_size,
        cfg.lr
    )
    .to_lowercase();
    crate::plot::training_curve(
        &out_dir.join(CURVE),
        &st.step_metrics,
        &st.epoch_metrics,
        run.steps_per_epoch,
        Some((st.initial_val_loss, st.initial_recall)),
        &title,
    )?;
    let stop = if st.stopped_early {
        StopReason::EarlyStopped
    } else {
        StopReason::Completed
    };
    let report = run.report(&st, model, stop, Some(best_recall), seconds);
    write_json(
        &out_dir.join(REPORT),
        &serde_json::to_value(&report).expect("report serialises"),
    )?;
    fs::remove_dir_all(resume_dir).map_err(io_err(resume_dir))?;
    Ok(report)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).expect("JSON value serialises") + "\n";
    fs::write(path, s).map_err(io_err(path))
}
