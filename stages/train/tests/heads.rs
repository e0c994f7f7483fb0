//! Classification heads and their training: PyTorch parity of the forward pass and one AdamW
//! step (`data/heads/`, from `tools/heads_reference.py`), learning on separable features, model
//! selection, determinism, outputs and input checks.

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use common::parity::{
    assert_all_within, assert_detects, compare, compare_scalar, fixture_machine, perturb,
    Comparison, Tol,
};
use common::{python, repo_root};
use tch::{Device, Tensor};
use train::finetune::{HEAD_CHECKPOINT, HEAD_CURVE, HEAD_EPOCH_METRICS, HEAD_REPORT, PREDICTIONS};
use train::heads::decays;
use train::optim::AdamW;
use train::params::read_safetensors;
use train::rng::uniform_values;
use train::{
    train_head, ClassificationHead, HeadConfig, HeadData, HeadEpoch, HeadKind, HeadObserver,
    HeadReport, HeadSplit, Silent, StopReason,
};

/// Error budget of the heads: one or two float32 matmuls over 16–24 terms and a softmax or
/// sigmoid loss, then one AdamW step. Another kernel order costs a few units of 6e-8 relative;
/// rtol 1e-5 leaves a margin of 10× and more, while a weight moved by 1e-3 is caught (asserted).
const HEADS: Tol = Tol::new(1e-5, 1e-7);

/// Every comparison of each reference case with PyTorch (`perturb`: move the first parameter of
/// each head by [`PERTURBATION`] after loading its initial weights).
fn head_comparisons(perturb_first: bool) -> (Vec<Comparison>, serde_json::Value) {
    let dir = repo_root().join("data/heads");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap()).unwrap();
    let tensors = read_safetensors(&dir.join("parity.safetensors")).unwrap();
    let get = |n: &str| {
        tensors
            .iter()
            .find(|(m, _)| m == n)
            .unwrap_or_else(|| panic!("fixture tensor `{n}` missing"))
            .1
            .shallow_clone()
    };
    let with_prefix = |p: &str| -> Vec<(String, Tensor)> {
        tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix(p)
                    .map(|k| (k.to_string(), t.shallow_clone()))
            })
            .collect()
    };
    let (lr, wd) = (
        meta["lr"].as_f64().unwrap(),
        meta["weight_decay"].as_f64().unwrap(),
    );
    let dropout_seed = meta["dropout_seed"].as_i64().unwrap();
    let mut out = Vec::new();
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let kind = if case["head"] == "mlp" {
            HeadKind::Mlp
        } else {
            HeadKind::Linear
        };
        let head = ClassificationHead::new(
            kind,
            case["n_input"].as_i64().unwrap(),
            case["classes"].as_i64().unwrap(),
            case["hidden"].as_i64().unwrap(),
            case["dropout"].as_f64().unwrap(),
            Device::Cpu,
            0,
        )
        .unwrap();
        head.load_state_dict(&with_prefix(&format!("{name}.init.")), Path::new(name))
            .unwrap();
        if perturb_first {
            perturb(head.params().iter().next().unwrap().1);
        }
        let (x, y) = (get(&format!("{name}.x")), get(&format!("{name}.y")));
        let eval = tch::no_grad(|| head.forward(&x, false));
        out.push(compare(
            format!("{name}: eval logits"),
            &eval,
            &get(&format!("{name}.eval_logits")),
            HEADS,
        ));

        let mut opt = AdamW::with_decay(head.params(), (0.9, 0.999), 1e-8, wd, decays);
        opt.zero_grad();
        // Other tests in this process train (and draw dropout masks) concurrently.
        let _rng = train::pretrain::torch_rng_lock();
        tch::manual_seed(dropout_seed);
        let loss = head.loss(&head.forward(&x, true), &y);
        loss.backward();
        opt.step(lr);
        out.push(compare_scalar(
            format!("{name}: loss"),
            loss.double_value(&[]),
            case["loss"].as_f64().unwrap(),
            HEADS,
        ));
        let after = with_prefix(&format!("{name}.after."));
        let ours = head.state_dict();
        let mut names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let mut our_names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
        our_names.sort_unstable();
        assert_eq!(our_names, names, "{name}: state-dict names");
        for (n, a) in &ours {
            let b = &after.iter().find(|(m, _)| m == n).unwrap().1;
            out.push(compare(
                format!("{name}: `{n}` after one step"),
                a,
                b,
                HEADS,
            ));
        }
        let eval = tch::no_grad(|| head.forward(&x, false));
        out.push(compare(
            format!("{name}: eval logits after the step"),
            &eval,
            &get(&format!("{name}.after_eval_logits")),
            HEADS,
        ));
    }
    (out, meta)
}

#[test]
fn heads_match_pytorch_forward_and_one_adamw_step() {
    let (cmp, meta) = head_comparisons(false);
    assert_all_within(&cmp, &fixture_machine(&meta));
}

#[test]
fn head_parity_catches_a_perturbed_weight() {
    let (cmp, meta) = head_comparisons(true);
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let of_case: Vec<Comparison> = cmp
            .iter()
            .filter(|c| c.what.starts_with(&format!("{name}:")))
            .cloned()
            .collect();
        assert_detects(&format!("{name}'s first parameter"), &of_case);
    }
}

/// `n` rows of `dim`-wide features: uniform noise in ±1 plus a class-dependent shift on the
/// first dimensions; labels cycle through the classes.
fn separable(n: usize, dim: i64, classes: i64, shift: f64, seed: u64) -> HeadSplit {
    let k = if classes == 1 { 2 } else { classes };
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 7 + i / 3) % k).collect();
    let mut v = uniform_values(seed, n * dim as usize, 0.0, 1.0);
    for (row, &l) in labels.iter().enumerate() {
        for c in 0..k {
            let sign = if c == l { 1.0 } else { -0.5 };
            v[row * dim as usize + c as usize] += (sign * shift) as f32;
        }
    }
    let features = Tensor::from_slice(&v).view([n as i64, dim]);
    let keys = (0..n).map(|i| format!("img{i:04}")).collect();
    HeadSplit::new(features, labels).with_keys(keys)
}

fn data(classes: i64, dim: i64, shift: f64) -> HeadData {
    HeadData {
        train: separable(400, dim, classes, shift, 1),
        valid: separable(150, dim, classes, shift, 2),
        test: separable(150, dim, classes, shift, 3),
    }
}

fn small(head: HeadKind, classes: i64) -> HeadConfig {
    HeadConfig {
        hidden: 32,
        epochs: 12,
        batch_size: 64,
        lr: 5e-3,
        patience: None,
        seed: 5,
        ..HeadConfig::new(head, classes)
    }
}

#[derive(Default)]
struct Record(Vec<HeadEpoch>);
impl HeadObserver for Record {
    fn on_epoch(&mut self, e: &HeadEpoch) -> ControlFlow<()> {
        self.0.push(e.clone());
        ControlFlow::Continue(())
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn mlp_head_learns_a_separable_binary_task_and_selects_on_validation_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(HeadKind::Mlp, 1);
    let mut rec = Record::default();
    let r = train_head(&cfg, &data(1, 32, 1.0), dir.path(), &mut rec).unwrap();
    assert!(r.test["auroc"] > 0.95, "test AUROC {}", r.test["auroc"]);
    assert!(r.valid["auroc"] > 0.95);
    for k in ["accuracy", "macro_f1", "loss"] {
        assert!(r.test.contains_key(k) && r.valid.contains_key(k), "{k}");
    }
    assert_eq!(r.selection_metric, "auroc");
    assert_eq!(r.trainable_params, 32 * 32 + 2 * 32 + 32 + 1);
    assert_eq!((r.train_examples, r.epochs_run), (400, 12));
    assert_eq!(r.stop, StopReason::Completed);
    // The selected epoch is the first with the best validation AUROC; the report's validation
    // scores are that epoch's (recomputed from the kept weights).
    let best = rec
        .0
        .iter()
        .map(|e| e.valid["auroc"])
        .fold(f64::NEG_INFINITY, f64::max);
    let first_best = rec.0.iter().find(|e| e.valid["auroc"] == best).unwrap();
    assert_eq!(r.best_epoch, first_best.epoch);
    assert_eq!(r.valid["auroc"], best);
    assert_eq!(r.valid["loss"], first_best.valid_loss);
    assert!(first_best.improved);
    // The loss went down.
    assert!(rec.0.last().unwrap().train_loss < rec.0[0].train_loss);
    for f in [
        HEAD_CHECKPOINT,
        HEAD_EPOCH_METRICS,
        PREDICTIONS,
        HEAD_CURVE,
        HEAD_REPORT,
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let back: HeadReport =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(HEAD_REPORT)).unwrap())
            .unwrap();
    assert_eq!(back, r);
    // The checkpoint loads into the PyTorch module with strict=True.
    let out = std::process::Command::new(python())
        .arg(repo_root().join("tools/heads_reference.py"))
        .arg("verify")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyTorch could not load head.safetensors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads every column of a Parquet file as `(name, values as f64 or strings)`.
fn read_parquet(path: &Path) -> Vec<(String, Vec<String>)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    use arrow_schema::DataType;
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut cols: Vec<(String, Vec<String>)> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for (i, field) in batch.schema().fields().iter().enumerate() {
            if cols.len() <= i {
                cols.push((field.name().clone(), Vec::new()));
            }
            let a = batch.column(i);
            let v: Vec<String> = match field.data_type() {
                DataType::Int64 => a
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .map(|x| x.to_string())
                    .collect(),
                DataType::Float64 => a
                    .as_primitive::<Float64Type>()
                    .iter()
                    .map(|x| format!("{x:?}"))
                    .collect(),
                DataType::Utf8 => a
                    .as_string::<i32>()
                    .iter()
                    .map(|x| x.unwrap().to_string())
                    .collect(),
                DataType::Boolean => a
                    .as_boolean()
                    .iter()
                    .map(|x| x.unwrap().to_string())
                    .collect(),
                t => panic!("unexpected column type {t:?}"),
            };
            cols[i].1.extend(v);
        }
    }
    cols
}

#[test]
fn output_tables_hold_the_test_predictions_and_every_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HeadConfig {
        epochs: 3,
        ..small(HeadKind::Mlp, 3)
    };
    let d = data(3, 16, 0.8);
    let r = train_head(&cfg, &d, dir.path(), &mut Silent).unwrap();
    let pred = read_parquet(&dir.path().join(PREDICTIONS));
    let names: Vec<&str> = pred.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "row",
            "key",
            "label",
            "prob_0",
            "prob_1",
            "prob_2",
            "predicted"
        ]
    );
    assert!(pred.iter().all(|(_, v)| v.len() == d.test.len()));
    assert_eq!(pred[1].1[4], "img0004");
    let labels: Vec<String> = d.test.labels.iter().map(|l| l.to_string()).collect();
    assert_eq!(pred[2].1, labels);
    // The accuracy in the report is the accuracy of the `predicted` column.
    let right = pred[6]
        .1
        .iter()
        .zip(&labels)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(r.test["accuracy"], right as f64 / labels.len() as f64);
    let epochs = read_parquet(&dir.path().join(HEAD_EPOCH_METRICS));
    let names: Vec<&str> = epochs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "epoch",
            "steps",
            "lr",
            "train_loss",
            "valid_loss",
            "valid_accuracy",
            "valid_auroc",
            "valid_auroc_class_0",
            "valid_auroc_class_1",
            "valid_auroc_class_2",
            "valid_macro_f1",
            "improved"
        ]
    );
    assert_eq!(epochs[0].1, ["1", "2", "3"]);
    // 400 rows in batches of 64: 7 steps per epoch.
    assert_eq!(epochs[1].1, ["7", "14", "21"]);
}

#[test]
fn head_weight_decay_spares_batchnorm_and_biases() {
    let h = ClassificationHead::original_mlp(768, 3, Device::Cpu, 0).unwrap();
    let opt = AdamW::with_decay(h.params(), (0.9, 0.999), 1e-8, 1e-4, decays);
    assert_eq!(
        opt.decay_mask(),
        [
            ("block_forward.2.weight", true),
            ("block_forward.3.weight", false),
            ("block_forward.3.bias", false),
            ("block_forward.6.weight", true),
            ("block_forward.6.bias", false),
        ]
    );
}

#[test]
fn original_schedule_and_decay_run_and_one_example_is_refused_by_the_mlp() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HeadConfig {
        epochs: 3,
        schedule: train::HeadSchedule::OriginalPerEpochRestarts,
        original_weight_decay: true,
        ..small(HeadKind::Mlp, 1)
    };
    let mut rec = Record::default();
    train_head(&cfg, &data(1, 16, 1.0), dir.path(), &mut rec).unwrap();
    // T_0 = int(0.4 · 7 · 3) = 8 epochs: epoch e runs at the cosine of e / 8.
    for e in &rec.0 {
        let t = (e.epoch - 1) as f64 / 8.0;
        let want = 1e-8 + (cfg.lr - 1e-8) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        assert!(
            (e.lr - want).abs() < 1e-15,
            "epoch {}: {} vs {want}",
            e.epoch,
            e.lr
        );
    }
    let one = HeadConfig {
        label_fraction: 0.001, // max(1, round(0.4)) = 1 row
        ..cfg
    };
    let e = train_head(&one, &data(1, 16, 1.0), dir.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("BatchNorm needs 2"), "{e}");
}

#[test]
fn linear_probe_learns_three_classes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HeadConfig {
        lr: 2e-2,
        ..small(HeadKind::Linear, 3)
    };
    let r = train_head(&cfg, &data(3, 16, 0.8), dir.path(), &mut Silent).unwrap();
    assert_eq!(r.selection_metric, "accuracy");
    assert!(r.test["accuracy"] > 0.85, "{:?}", r.test);
    assert!(r.test["macro_f1"] > 0.85, "{:?}", r.test);
    for k in 0..3 {
        assert!(r.test[&format!("auroc_class_{k}")] > 0.9);
    }
    assert!(r.test["auroc"] > 0.9);
    assert_eq!(r.trainable_params, 16 * 3 + 3);
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let run = |seed: u64| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HeadConfig {
            seed,
            epochs: 4,
            label_fraction: 0.5,
            ..small(HeadKind::Mlp, 3)
        };
        let r = train_head(&cfg, &data(3, 16, 0.3), dir.path(), &mut Silent).unwrap();
        let files: BTreeMap<&str, Vec<u8>> = [HEAD_CHECKPOINT, HEAD_EPOCH_METRICS, PREDICTIONS]
            .into_iter()
            .map(|f| (f, bytes(&dir.path().join(f))))
            .collect();
        (HeadReport { seconds: 0.0, ..r }, files)
    };
    let (a, fa) = run(11);
    let (b, fb) = run(11);
    assert_eq!(a, b);
    assert_eq!(fa, fb);
    assert_eq!(a.train_examples, 200);
    let (_, fc) = run(12);
    assert_ne!(fa[HEAD_CHECKPOINT], fc[HEAD_CHECKPOINT]);
}

#[test]
fn early_stopping_and_label_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HeadConfig {
        epochs: 50,
        patience: Some(2),
        min_delta: 0.5, // nothing beats the first epoch by 0.5 accuracy
        label_fraction: 0.1,
        ..small(HeadKind::Mlp, 3)
    };
    let r = train_head(&cfg, &data(3, 16, 0.8), dir.path(), &mut Silent).unwrap();
    // Epoch 1 sets the bar; epochs 2 and 3 do not beat it by `min_delta`: stop after 3.
    assert_eq!(r.stop, StopReason::EarlyStopped);
    assert_eq!(r.epochs_run, 3);
    assert_eq!(r.train_examples, 40);
}

#[test]
fn non_finite_features_and_bad_labels_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(HeadKind::Mlp, 1);
    let d = data(1, 8, 0.5);
    let _ = d.valid.features.get(3).get(5).fill_(f64::NAN);
    let e = train_head(&cfg, &d, dir.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("valid split") && e.contains("row 3") && e.contains("column 5"),
        "{e}"
    );
    let d = data(1, 8, 0.5);
    let _ = d.test.features.get(7).get(0).fill_(f64::INFINITY);
    let e = train_head(&cfg, &d, dir.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test split") && e.contains("row 7") && e.contains("inf"),
        "{e}"
    );
    let mut d = data(1, 8, 0.5);
    d.train.labels[9] = 2;
    let e = train_head(&cfg, &d, dir.path(), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train split") && e.contains("row 9"), "{e}");
}
