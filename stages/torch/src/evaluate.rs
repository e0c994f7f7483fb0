//! The `classify` and `segment` stages as the worker runs them (declarations:
//! `stages::evaluate`): inputs resolved from the stage context into `train::train_head`
//! and `segment::train_segmenter`, and a `result.json` ([`EvalResult`]) the report reads.

use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline::stage::format_bytes;
use pipeline::{StageContext, StageError};
use tch::{Device, Kind, Tensor};
use train::{Adaptor, AdaptorConfig, CheckpointInfo, ImageOnly};

use crate::encoder::{device_name, torch_device};
use crate::pretrain::{input_name, read_input_table, split_rows};
use crate::segment::{train_segmenter, DiceTerm, SegConfig, SegData};
use artifacts::report::{EvalResult, RESULT_FILE};
use artifacts::table::{read_string_columns, EmbeddingTable};
use stages::evaluate::AdaptorInit;
use stages::ingest::RECORDS;
use stages::kinds::classify::{ClassifyParams, Head};
use stages::kinds::encode_image::Normalize;
use stages::kinds::segment::{Augment, Decoder, DiceLoss, SegmentParams};
use stages::pretrain::PROVENANCE_FILE;

/// The metrics that are defined (an undefined one, e.g. positive-only Dice on a split without
/// positives, is left out rather than written as a JSON null).
pub(crate) fn defined(
    m: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    m.iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The dataset an ingest artifact holds (its `summary.json`).
pub(crate) fn dataset_of(records_dir: &Path) -> Result<String, StageError> {
    let path = records_dir.join("summary.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    v["dataset"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no `dataset` field", path.display()).into())
}

/// An integer column of a Parquet file (int32 or int64, no nulls).
pub(crate) fn read_int_column(path: &Path, name: &str) -> Result<Vec<i64>, StageError> {
    let err = |m: String| -> StageError { format!("{}: {m}", path.display()).into() };
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(e.to_string()))?;
    if builder.schema().index_of(name).is_err() {
        return Err(err(format!("no column `{name}`")));
    }
    let mut out = Vec::new();
    for batch in builder.build().map_err(|e| err(e.to_string()))? {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        let col = batch.column_by_name(name).expect("checked");
        if col.null_count() > 0 {
            return Err(err(format!("column `{name}` has nulls")));
        }
        match col.data_type() {
            DataType::Int32 => out.extend(
                col.as_primitive::<Int32Type>()
                    .values()
                    .iter()
                    .map(|&v| v as i64),
            ),
            DataType::Int64 => out.extend(col.as_primitive::<Int64Type>().values().iter().copied()),
            other => return Err(err(format!("column `{name}` is {other}, not an integer"))),
        }
    }
    Ok(out)
}

/// A pooled embedding table (not a token table) aligned with the records' `keys`. The stages
/// that evaluate on pooled features hold them whole (rows × D float32s, docs/scale.md), and log
/// how many bytes that is beside their memory budget.
pub(crate) fn pooled_table(
    ctx: &StageContext,
    slot: &str,
    keys: &[String],
) -> Result<EmbeddingTable, StageError> {
    let table = read_input_table(ctx, slot)?;
    if table.meta.tokens.is_some() {
        return Err(format!(
            "{}: a token table; this stage takes pooled vectors",
            table.path.display()
        )
        .into());
    }
    table.check_aligned(keys)?;
    let bytes = (table.values.len() * 4) as u64;
    ctx.log(format!(
        "holding {} of pooled features ({} rows × {} float32s of {}) in memory; budget {}",
        format_bytes(bytes),
        table.rows(),
        table.meta.dim,
        table.path.display(),
        format_bytes(ctx.memory())
    ));
    Ok(table)
}

/// A downstream dataset's pooled image features and the records' labels (`label_column`).
pub(crate) fn features_and_labels(
    ctx: &StageContext,
    records_dir: &Path,
    label_column: &str,
) -> Result<(EmbeddingTable, Vec<i64>), StageError> {
    let records = records_dir.join(RECORDS);
    let keys = read_string_columns(&records, &["key"])?.remove(0);
    let table = pooled_table(ctx, "features", &keys)?;
    Ok((table, read_int_column(&records, label_column)?))
}

/// The frozen adaptor of an evaluation: loaded from a `train-adaptor` artifact, or freshly
/// initialised (the random-init baseline), plus the text encoder it was pre-trained with.
pub(crate) struct FrozenAdaptor {
    pub(crate) model: Adaptor,
    pub(crate) mode: &'static str,
    pub(crate) text: String,
    /// The pooling of the text table it was pre-trained on (its `provenance.json`).
    pub(crate) text_pooling: Option<String>,
    checkpoint: PathBuf,
}

pub(crate) fn frozen_adaptor(
    ctx: &StageContext,
    init: AdaptorInit,
    vision_dim: i64,
    seed: u64,
    device: Device,
) -> Result<Option<FrozenAdaptor>, StageError> {
    let random = init == AdaptorInit::Random;
    // The random-init baseline: the same module (or, without an input, the original module for
    // this width) freshly initialised from `seed`, saved so the segmentation library can load it.
    let random_adaptor = |cfg: AdaptorConfig, text: String| -> Result<FrozenAdaptor, StageError> {
        let model = Adaptor::new(&cfg, device, seed)?;
        let checkpoint = ctx.out_dir().join("random-adaptor.safetensors");
        model.save(&checkpoint, &CheckpointInfo::new(cfg))?;
        Ok(FrozenAdaptor {
            model,
            mode: "random",
            text,
            text_pooling: None,
            checkpoint,
        })
    };
    let Some(a) = ctx.inputs("adaptor").first() else {
        return Ok(if random {
            Some(random_adaptor(
                AdaptorConfig::original(vision_dim),
                "none".into(),
            )?)
        } else {
            None
        });
    };
    let path = a.path.join(train::pretrain::BEST_CHECKPOINT);
    // The configuration alone (`adaptor.json`); the weights are read only when they are used.
    let info_path = train::model::config_path(&path);
    let info: CheckpointInfo = std::fs::read(&info_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", info_path.display()))?;
    if info.model.vision_dim != vision_dim {
        return Err(format!(
            "the adaptor {} takes {}-d image features; the features are {vision_dim}-d (encode \
             the downstream images with the backbone the adaptor was pre-trained on)",
            path.display(),
            info.model.vision_dim
        )
        .into());
    }
    let prov = std::fs::read(a.path.join(PROVENANCE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let prov_text = |field: &str| {
        prov.as_ref()
            .and_then(|v| v["text"][field].as_str().map(str::to_string))
    };
    let text =
        prov_text("backbone").unwrap_or_else(|| input_name(ctx, "adaptor").unwrap_or_default());
    let text_pooling = prov_text("pooling");
    if random {
        return Ok(Some(random_adaptor(info.model, text)?));
    }
    let (model, _) = Adaptor::from_checkpoint(&path, device)?;
    Ok(Some(FrozenAdaptor {
        model,
        mode: "pretrained",
        text,
        text_pooling,
        checkpoint: path,
    }))
}

/// The parts of `EvalResult::setting` every evaluation records: the adaptor's text pooling (when
/// it has one) and the vision backbone's kind.
fn setting_of(
    adaptor: Option<&FrozenAdaptor>,
    backbone_kind: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut s = std::collections::BTreeMap::new();
    if let Some(p) = adaptor.and_then(|a| a.text_pooling.clone()) {
        s.insert("text_pooling".to_string(), p);
    }
    s.insert("backbone_kind".to_string(), backbone_kind.to_string());
    s
}

/// Features `[N, D]` through the adaptor's image path, one sample at a time in effect (reference
/// G.6: per-sample inference; chunks only bound memory).
pub(crate) fn through_adaptor(
    a: &FrozenAdaptor,
    x: &Tensor,
    device: Device,
) -> Result<Tensor, StageError> {
    let n = x.size()[0];
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (n - start).min(4096);
        let chunk = x.narrow(0, start, len).to_device(device);
        parts.push(
            a.model
                .embed_image(&chunk, None, ImageOnly::PerSample)?
                .to_device(Device::Cpu),
        );
        start += len;
    }
    Ok(Tensor::cat(&parts, 0))
}

struct HeadProgress<'a> {
    ctx: &'a StageContext,
    epochs: usize,
    metric: &'static str,
}

impl train::finetune::HeadObserver for HeadProgress<'_> {
    fn on_epoch(&mut self, e: &train::finetune::HeadEpoch) -> ControlFlow<()> {
        self.ctx
            .progress(e.epoch as u64, self.epochs as u64, "epochs");
        self.ctx.log(format!(
            "epoch {}: train loss {:.4}, valid loss {:.4}, valid {} {:.4}{}",
            e.epoch,
            e.train_loss,
            e.valid_loss,
            self.metric,
            e.valid.get(self.metric).copied().unwrap_or(f64::NAN),
            if e.improved { " (best so far)" } else { "" }
        ));
        if self.ctx.is_cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn log(&mut self, line: &str) {
        self.ctx.log(line);
    }
}

fn split(
    t: &EmbeddingTable,
    features: &Tensor,
    labels: &[i64],
    name: &str,
) -> Result<train::finetune::HeadSplit, StageError> {
    let rows = split_rows(t, name)?;
    if rows.is_empty() {
        return Err(format!("{}: no `{name}` rows", t.path.display()).into());
    }
    let idx = Tensor::from_slice(&rows);
    let keys = rows.iter().map(|&r| t.keys[r as usize].clone()).collect();
    let y = rows.iter().map(|&r| labels[r as usize]).collect();
    Ok(train::finetune::HeadSplit::new(features.index_select(0, &idx), y).with_keys(keys))
}

pub fn classify(p: &ClassifyParams, ctx: &StageContext) -> Result<(), StageError> {
    let records_dir = &ctx.input("records")?.path;
    let dataset = dataset_of(records_dir)?;
    let (label_column, classes, metric) = match dataset.as_str() {
        "rsna" => ("target", 1, "auroc"),
        "covidx" => ("label", 3, "accuracy"),
        other => {
            return Err(format!(
                "classify: the records are `{other}`; classification is defined for rsna (binary, \
                 AUROC) and covidx (3 classes, accuracy)"
            )
            .into())
        }
    };
    let (table, labels) = features_and_labels(ctx, records_dir, label_column)?;

    let t = &p.training;
    let seed = t.seed as u64;
    let device = torch_device(t.device)?;
    let dim = table.meta.dim as i64;
    let raw = Tensor::from_slice(&table.values).view([table.rows() as i64, dim]);
    let adaptor = frozen_adaptor(ctx, t.adaptor_init, dim, seed, device)?;
    let features = match &adaptor {
        Some(a) => through_adaptor(a, &raw, device)?,
        None => raw,
    };
    let features = features.to_kind(Kind::Float);
    let data = train::finetune::HeadData {
        train: split(&table, &features, &labels, "train")?,
        valid: split(&table, &features, &labels, "valid")?,
        test: split(&table, &features, &labels, "test")?,
    };

    let head_name = p.head.name().to_string();
    let head = match p.head {
        Head::Linear => train::heads::HeadKind::Linear,
        Head::Mlp => train::heads::HeadKind::Mlp,
    };
    let mut cfg = train::finetune::HeadConfig::new(head, classes);
    cfg.label_fraction = t.fraction;
    cfg.seed = seed;
    cfg.epochs = t.epochs as usize;
    cfg.batch_size = t.batch_size as usize;
    cfg.lr = t.lr;
    cfg.weight_decay = t.weight_decay;
    cfg.patience = t.early_stop();
    // The training library takes the device by name (`cuda:0`), resolved here once.
    cfg.device = device_name(device);
    let mode = adaptor.as_ref().map_or("none", |a| a.mode);
    ctx.log(format!(
        "classify {dataset}: {head_name} head on {} features ({} adaptor{}), {} train rows × {} = fraction, seed {seed}",
        table.meta.backbone,
        mode,
        adaptor
            .as_ref()
            .map(|a| format!(", text {}", a.text))
            .unwrap_or_default(),
        data.train.len(),
        cfg.label_fraction
    ));
    let mut observer = HeadProgress {
        ctx,
        epochs: cfg.epochs,
        metric,
    };
    let report = train::finetune::train_head(&cfg, &data, ctx.out_dir(), &mut observer)?;
    ctx.check_cancelled()?;
    let mut setting = setting_of(adaptor.as_ref(), &table.meta.backbone_kind);
    setting.insert("image_pooling".into(), table.meta.pooling.clone());
    // The features' geometry and normalisation, from the encode stage's description.
    if let Ok(pre) = serde_json::from_str::<serde_json::Value>(&table.meta.preprocessing) {
        for k in ["resize", "crop", "normalize"] {
            match &pre[k] {
                serde_json::Value::String(v) => setting.insert(k.into(), v.clone()),
                serde_json::Value::Number(v) => setting.insert(k.into(), v.to_string()),
                _ => None,
            };
        }
    }
    let result = EvalResult {
        setting,
        instance: ctx.instance().to_string(),
        task: "classification".into(),
        dataset,
        metric: metric.into(),
        vision: table.meta.backbone.clone(),
        text: adaptor.as_ref().map_or("none".into(), |a| a.text.clone()),
        adaptor: mode.into(),
        head: head_name,
        fraction: cfg.label_fraction,
        seed: seed as i64,
        valid: defined(&report.valid),
        test: defined(&report.test),
        best_epoch: report.best_epoch,
        epochs_run: report.epochs_run,
        train_examples: report.train_examples,
        trainable_params: report.trainable_params,
        seconds: report.seconds,
    };
    result.write(&ctx.out_dir().join(RESULT_FILE))?;
    ctx.log(format!(
        "test {metric} {:.4} (valid {:.4}, epoch {} of {}), {} trainable parameters",
        result.test.get(metric).copied().unwrap_or(f64::NAN),
        result.valid.get(metric).copied().unwrap_or(f64::NAN),
        result.best_epoch,
        result.epochs_run,
        result.trainable_params
    ));
    Ok(())
}

pub fn segment(p: &SegmentParams, ctx: &StageContext) -> Result<(), StageError> {
    let records_dir = &ctx.input("records")?.path;
    let raw = &ctx.input("raw")?.path;
    let bb = ctx.input("backbone")?;
    let backbone_kind = bb.kind().to_string();
    let vision = input_name(ctx, "backbone")?;
    let dataset = dataset_of(records_dir)?;
    let decoder = match (p.decoder, backbone_kind.as_str()) {
        (Decoder::Auto | Decoder::Unet, "resnet-ae") => "unet",
        (Decoder::Auto | Decoder::Vit, "dinov2") => "vit-decoder",
        (d, k) => {
            return Err(format!(
            "segment: decoder `{d}` does not fit a `{k}` backbone (unet: resnet-ae; vit: dinov2)"
        )
            .into())
        }
    };
    let t = &p.training;
    let seed = t.seed as u64;
    let device = torch_device(t.device)?;
    let crop = match (p.crop, dataset.as_str()) {
        (0, "siim") => 896,
        (0, _) => 224,
        (c, _) => c as u32,
    };
    let fraction = t.fraction;

    let mut cfg = SegConfig::new(&backbone_kind, &bb.path);
    let normalize = match p.normalize {
        Normalize::Imagenet => crate::preprocess::Normalize::Imagenet,
        Normalize::Half => crate::preprocess::Normalize::Half,
    };
    cfg.normalize = normalize.name().into();
    cfg.augment = match p.augment {
        Augment::None => None,
        Augment::ShiftScaleRotate => Some(crate::segment::ShiftScaleRotate::ORIGINAL),
    };
    // The adaptor's image path takes the backbone's pooled width; build or load it first.
    let vision_dim =
        crate::segment::SegBackbone::load(&bb.path, &backbone_kind, normalize, device)?.dim();
    let adaptor = frozen_adaptor(ctx, t.adaptor_init, vision_dim, seed, device)?;
    cfg.adaptor = adaptor.as_ref().map(|a| a.checkpoint.clone());
    cfg.crop = crop;
    cfg.batch_size = t.batch_size as usize;
    cfg.epochs = t.epochs as usize;
    cfg.patience = t.patience as usize;
    cfg.lr = t.lr;
    cfg.weight_decay = t.weight_decay;
    cfg.loss.alpha = p.alpha;
    cfg.loss.dice = match p.dice_loss {
        DiceLoss::Modified => DiceTerm::Modified,
        DiceLoss::Original => DiceTerm::Original,
    };
    cfg.seed = seed;
    cfg.device = device_name(device);
    // Each of the three splits may cache a quarter of the budget in memory; larger splits keep
    // their features in row files in the scratch folder (same results, see docs/scale.md).
    let scratch = ctx
        .temp_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ctx.out_dir().with_file_name("tmp"))
        .join("segment-features");
    cfg.feature_store = Some((ctx.memory() / 4, scratch.clone()));
    let _scratch = crate::pretrain::Scratch(scratch);
    let data = SegData::load(
        &records_dir.join(RECORDS),
        raw,
        &dataset,
        crop,
        fraction,
        seed,
    )?;
    let mode = adaptor.as_ref().map_or("none", |a| a.mode);
    ctx.log(format!(
        "segment {dataset}: {decoder} over {vision} ({backbone_kind}), {mode} adaptor, crop {crop}, \
         {} of {} train images (fraction {fraction}), seed {seed}",
        data.train.len(),
        data.train_available
    ));
    let report = train_segmenter(cfg.clone(), &data, ctx.out_dir(), ctx)?;
    ctx.check_cancelled()?;
    let mut setting = setting_of(adaptor.as_ref(), &backbone_kind);
    setting.insert("normalize".into(), p.normalize.name().into());
    setting.insert("augment".into(), p.augment.name().into());
    setting.insert("crop".into(), crop.to_string());
    let result = EvalResult {
        setting,
        instance: ctx.instance().to_string(),
        task: "segmentation".into(),
        dataset,
        metric: "dice".into(),
        vision,
        text: adaptor.as_ref().map_or("none".into(), |a| a.text.clone()),
        adaptor: mode.into(),
        head: decoder.into(),
        fraction,
        seed: seed as i64,
        valid: defined(&report.valid),
        test: defined(&report.test),
        best_epoch: report.best_epoch,
        epochs_run: report.epochs_run,
        train_examples: report.train_images,
        trainable_params: report.trainable_params,
        seconds: report.seconds,
    };
    result.write(&ctx.out_dir().join(RESULT_FILE))?;
    ctx.log(format!(
        "test Dice {:.4}, positive-only Dice {:.4}, empty share {:.3} (all-empty predictor {:.4})",
        result.test.get("dice").copied().unwrap_or(f64::NAN),
        result
            .test
            .get("dice_positive")
            .copied()
            .unwrap_or(f64::NAN),
        result.test.get("empty_share").copied().unwrap_or(f64::NAN),
        result
            .test
            .get("dice_all_empty_baseline")
            .copied()
            .unwrap_or(f64::NAN),
    ));
    Ok(())
}
