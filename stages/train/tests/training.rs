//! The training loop: determinism, resuming, early stopping, schedules and outputs.

use std::fs;
use std::ops::ControlFlow;
use std::path::Path;

use tch::{Device, Tensor};
use train::pretrain::{
    BEST_CHECKPOINT, CURVE, EPOCH_METRICS, LAST_CHECKPOINT, REPORT, RESUME_DIR, RETRIEVAL,
    STEP_METRICS,
};
use train::rng::uniform_values;
use train::{
    fit, Adaptor, AdaptorConfig, EpochMetrics, InMemoryPairs, Observer, Silent, StepMetrics,
    StopReason, TrainConfig,
};

/// Random pooled pairs (not learnable; enough to exercise the loop).
fn pairs(n: usize, dv: i64, dt: i64, seed: u64) -> InMemoryPairs {
    let img =
        Tensor::from_slice(&uniform_values(seed, n * dv as usize, 0.0, 1.0)).view([n as i64, dv]);
    let txt = Tensor::from_slice(&uniform_values(seed + 1, n * dt as usize, 0.0, 1.0))
        .view([n as i64, dt]);
    InMemoryPairs::pooled(img, txt).unwrap()
}

/// A small original-architecture model, so that many runs stay fast.
fn small_config() -> TrainConfig {
    let model = AdaptorConfig {
        projection_dim: 64,
        heads: 4,
        ff: 128,
        text_dim: 48,
        ..AdaptorConfig::original(32)
    };
    TrainConfig {
        lr: 1e-3,
        batch_size: 8,
        epochs: 4,
        warmup_fraction: 0.1,
        patience: None,
        ..TrainConfig::new(model)
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Stops at the given epoch end or global step.
struct StopAt {
    epoch: Option<usize>,
    step: Option<u64>,
    steps: Vec<StepMetrics>,
    epochs: Vec<EpochMetrics>,
}

impl StopAt {
    fn never() -> Self {
        StopAt {
            epoch: None,
            step: None,
            steps: vec![],
            epochs: vec![],
        }
    }
}

impl Observer for StopAt {
    fn on_step(&mut self, m: &StepMetrics) -> ControlFlow<()> {
        self.steps.push(m.clone());
        if Some(m.step) == self.step {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
    fn on_epoch(&mut self, m: &EpochMetrics) -> ControlFlow<()> {
        self.epochs.push(m.clone());
        if Some(m.epoch) == self.epoch {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

#[test]
fn two_runs_with_the_same_seed_write_identical_checkpoint_bytes() {
    // The real original module (512-d vision), two short epochs.
    let cfg = TrainConfig {
        lr: 1e-4,
        batch_size: 16,
        epochs: 2,
        patience: None,
        ..TrainConfig::new(AdaptorConfig::original(512))
    };
    let (tr, va) = (pairs(40, 512, 768, 1), pairs(16, 512, 768, 9));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    fit(&cfg, &tr, &va, dirs[0].path(), &mut Silent).unwrap();
    fit(&cfg, &tr, &va, dirs[1].path(), &mut Silent).unwrap();
    for f in [
        BEST_CHECKPOINT,
        LAST_CHECKPOINT,
        "adaptor.json",
        "last.json",
    ] {
        assert!(
            bytes(&dirs[0].path().join(f)) == bytes(&dirs[1].path().join(f)),
            "{f} differs between identical runs"
        );
    }
    let other = TrainConfig { seed: 43, ..cfg };
    fit(&other, &tr, &va, dirs[2].path(), &mut Silent).unwrap();
    assert!(
        bytes(&dirs[0].path().join(LAST_CHECKPOINT))
            != bytes(&dirs[2].path().join(LAST_CHECKPOINT))
    );
}

#[test]
fn a_resumed_run_reaches_the_same_weights_as_an_uninterrupted_run() {
    let cfg = small_config();
    let (tr, va) = (pairs(60, 32, 48, 1), pairs(20, 32, 48, 9));
    let full = tempfile::tempdir().unwrap();
    let mut obs = StopAt::never();
    let report = fit(&cfg, &tr, &va, full.path(), &mut obs).unwrap();
    assert_eq!(report.stop, StopReason::Completed);
    assert_eq!((report.epochs_completed, report.steps), (4, 32));

    // Stopped at the end of epoch 2 ("killed" after its resume state was written)...
    let cut = tempfile::tempdir().unwrap();
    let r = fit(
        &cfg,
        &tr,
        &va,
        cut.path(),
        &mut StopAt {
            epoch: Some(2),
            ..StopAt::never()
        },
    )
    .unwrap();
    assert_eq!((r.stop, r.epochs_completed), (StopReason::Interrupted, 2));
    assert!(cut.path().join(RESUME_DIR).join("state.json").exists());
    assert!(!cut.path().join(LAST_CHECKPOINT).exists());
    // ...then in the middle of epoch 3 (step 20 of 32): the resume state stays at epoch 2...
    let r = fit(
        &cfg,
        &tr,
        &va,
        cut.path(),
        &mut StopAt {
            step: Some(20),
            ..StopAt::never()
        },
    )
    .unwrap();
    assert_eq!(
        (r.stop, r.resumed_after_epoch, r.epochs_completed),
        (StopReason::Interrupted, Some(2), 2)
    );
    // ...and finished.
    let mut resumed = StopAt::never();
    let r = fit(&cfg, &tr, &va, cut.path(), &mut resumed).unwrap();
    assert_eq!(
        (r.stop, r.resumed_after_epoch, r.steps),
        (StopReason::Completed, Some(2), 32)
    );
    assert_eq!(resumed.steps.first().map(|s| s.step), Some(17));

    for f in [LAST_CHECKPOINT, BEST_CHECKPOINT] {
        assert!(
            bytes(&full.path().join(f)) == bytes(&cut.path().join(f)),
            "{f}: resumed run differs"
        );
    }
    // The metrics of the resumed epochs are the uninterrupted run's, bit for bit.
    let key = |e: &EpochMetrics| {
        (
            e.epoch,
            e.train_loss.to_bits(),
            e.val_loss.to_bits(),
            e.lr.to_bits(),
        )
    };
    assert_eq!(
        resumed.epochs.iter().map(key).collect::<Vec<_>>(),
        obs.epochs[2..].iter().map(key).collect::<Vec<_>>()
    );
    assert!(
        !cut.path().join(RESUME_DIR).exists(),
        "the resume state is removed at the end"
    );

    // A resume state from another configuration is refused.
    let other = tempfile::tempdir().unwrap();
    fit(
        &cfg,
        &tr,
        &va,
        other.path(),
        &mut StopAt {
            epoch: Some(1),
            ..StopAt::never()
        },
    )
    .unwrap();
    let err = fit(
        &TrainConfig { lr: 2e-3, ..cfg },
        &tr,
        &va,
        other.path(),
        &mut Silent,
    )
    .unwrap_err();
    assert!(err.to_string().contains("different configuration"), "{err}");
}

#[test]
fn outputs_are_written_and_readable() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let cfg = small_config();
    let (tr, va) = (pairs(60, 32, 48, 1), pairs(20, 32, 48, 9));
    let dir = tempfile::tempdir().unwrap();
    let report = fit(&cfg, &tr, &va, dir.path(), &mut Silent).unwrap();
    let d = dir.path();
    let rows = |f: &str| {
        let r = SerializedFileReader::new(fs::File::open(d.join(f)).unwrap()).unwrap();
        let cols: Vec<String> = r
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        (r.metadata().file_metadata().num_rows(), cols)
    };
    let (n, cols) = rows(STEP_METRICS);
    assert_eq!(n, 32);
    assert_eq!(
        cols,
        [
            "epoch",
            "step",
            "lr",
            "loss",
            "contrastive",
            "itm",
            "logit_scale",
            "batch_size",
            "seconds"
        ]
    );
    let (n, cols) = rows(EPOCH_METRICS);
    assert_eq!(n, 4);
    assert!(
        cols.contains(&"val_loss".to_string()) && cols.contains(&"text_to_image_r10".to_string())
    );
    // A real PNG of the promised size.
    let dec = png::Decoder::new(std::io::BufReader::new(
        fs::File::open(d.join(CURVE)).unwrap(),
    ));
    let info = dec.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (1200, 480));
    let retrieval: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join(RETRIEVAL)).unwrap()).unwrap();
    assert_eq!(retrieval["recall"]["pairs"], 20);
    assert!(
        retrieval["recall"]["image_to_text_r10"].as_f64().unwrap()
            >= retrieval["recall"]["image_to_text_r1"].as_f64().unwrap()
    );
    let rep: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join(REPORT)).unwrap()).unwrap();
    assert_eq!(rep["stop"], "completed");
    assert_eq!(rep["trainable_params"], report.trainable_params);
    // The kept checkpoint is the best epoch's, and loads with its config.
    let (m, info) = Adaptor::from_checkpoint(&d.join(BEST_CHECKPOINT), Device::Cpu).unwrap();
    assert_eq!(info.epoch, report.best_epoch);
    assert_eq!(info.val_loss, report.best_val_loss);
    assert_eq!(m.cfg, cfg.model);
}

#[test]
fn early_stopping_keeps_the_best_checkpoint() {
    // min_delta so large that nothing after epoch 1 counts as an improvement.
    let cfg = TrainConfig {
        patience: Some(2),
        min_delta: 1e3,
        epochs: 10,
        ..small_config()
    };
    let (tr, va) = (pairs(40, 32, 48, 1), pairs(20, 32, 48, 9));
    let dir = tempfile::tempdir().unwrap();
    let mut obs = StopAt::never();
    let r = fit(&cfg, &tr, &va, dir.path(), &mut obs).unwrap();
    assert_eq!(
        (r.stop, r.epochs_completed, r.best_epoch),
        (StopReason::EarlyStopped, 3, Some(1))
    );
    assert_eq!(
        obs.epochs.iter().map(|e| e.improved).collect::<Vec<_>>(),
        [true, false, false]
    );
    let info: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("adaptor.json")).unwrap())
            .unwrap();
    assert_eq!(info["epoch"], 1);
    let last: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("last.json")).unwrap()).unwrap();
    assert_eq!(last["epoch"], 3);
}

#[test]
fn learning_rate_follows_the_schedule_and_the_original_switches() {
    // 40 pairs / batch 8 = 5 steps per epoch, 4 epochs = 20 steps, warm-up int(0.1 · 20) = 2.
    let cfg = small_config();
    let (tr, va) = (pairs(40, 32, 48, 1), pairs(16, 32, 48, 9));
    let lrs = |cfg: &TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        let mut obs = StopAt::never();
        fit(cfg, &tr, &va, dir.path(), &mut obs).unwrap();
        obs.steps.iter().map(|s| s.lr).collect::<Vec<f64>>()
    };
    let fixed = lrs(&cfg);
    let factor = |s: u64| {
        if s < 2 {
            s as f64 / 2.0
        } else {
            (20 - s.min(20)) as f64 / 18.0
        }
    };
    let want: Vec<f64> = (0..20).map(|s| 1e-3 * factor(s)).collect();
    assert_eq!(fixed.len(), 20);
    for (g, w) in fixed.iter().zip(&want) {
        assert!((g - w).abs() < 1e-15, "{fixed:?}");
    }
    // The original: stepped inside training_step before the update, and once more per epoch.
    let orig = lrs(&TrainConfig {
        original_scheduler_stepping: true,
        ..cfg.clone()
    });
    let want: Vec<f64> = (0..20u64).map(|s| 1e-3 * factor(s + 1 + s / 5)).collect();
    for (g, w) in orig.iter().zip(&want) {
        assert!((g - w).abs() < 1e-15, "{orig:?}");
    }
}

#[test]
fn shuffling_and_weight_decay_switches_change_the_result() {
    let cfg = TrainConfig {
        epochs: 2,
        ..small_config()
    };
    let (tr, va) = (pairs(40, 32, 48, 1), pairs(16, 32, 48, 9));
    let run = |cfg: &TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        fit(cfg, &tr, &va, dir.path(), &mut Silent).unwrap();
        bytes(&dir.path().join(LAST_CHECKPOINT))
    };
    let base = run(&cfg);
    assert!(
        base != run(&TrainConfig {
            original_no_shuffle: true,
            ..cfg.clone()
        })
    );
    assert!(
        base != run(&TrainConfig {
            original_weight_decay: true,
            ..cfg.clone()
        })
    );
}

#[test]
fn bad_inputs_are_reported() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let err = fit(
        &cfg,
        &pairs(20, 31, 48, 1),
        &pairs(8, 32, 48, 2),
        dir.path(),
        &mut Silent,
    )
    .unwrap_err();
    assert!(err.to_string().contains("image 31"), "{err}");
    let err = InMemoryPairs::pooled(
        Tensor::zeros([3, 4], (tch::Kind::Float, Device::Cpu)),
        Tensor::zeros([2, 4], (tch::Kind::Float, Device::Cpu)),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("same N"), "{err}");
}
