//! The ad-hoc commands behind `adaptor embed text|image` and `adaptor-torch convert-resnet-ae`:
//! the encode stages' code on files named on the command line instead of a records table.

use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::bert::{TextEncoder, TextPooling};
use crate::encoder::{
    encode_images, encode_texts, ImagePooling, Items, LoopOptions, Reporter, VisionModel,
};
use crate::error::{Error, Result};
use crate::preprocess::{Normalize, Preprocess};
use crate::resnet_ae::ResNetAeEncoder;
use crate::weights::{find_weight_files, read_file, Weights};
use artifacts::table::TableMeta;

/// Settings of `embed text`.
#[derive(Debug, Clone)]
pub struct EmbedText {
    pub backbone: PathBuf,
    pub pooling: TextPooling,
    pub max_length: usize,
    pub input: PathBuf,
    pub output: PathBuf,
    pub batch_size: usize,
    pub device: tch::Device,
    pub precision: tch::Kind,
    pub threads: usize,
    /// Untimed forward passes before the loop (`warm_up`).
    pub warmup: usize,
}

fn folder_name(p: &Path) -> String {
    p.canonicalize()
        .ok()
        .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| p.display().to_string())
}

fn precision_name(k: tch::Kind) -> &'static str {
    if k == tch::Kind::BFloat16 {
        "bf16"
    } else {
        "fp32"
    }
}

/// One text per line of `input` (the key is the line number from 0); writes `key`, `embedding`
/// (or `tokens`/`mask`).
pub fn embed_text(a: &EmbedText, rep: &dyn Reporter) -> Result<usize> {
    let text = std::fs::read_to_string(&a.input).map_err(|e| Error::io(&a.input, e))?;
    let texts: Vec<String> = text.lines().map(str::to_string).collect();
    let keys: Vec<String> = (0..texts.len()).map(|i| i.to_string()).collect();
    let enc = TextEncoder::load(&a.backbone, a.max_length, a.device, a.precision)?;
    let tokens = a.pooling == TextPooling::Tokens;
    let meta = TableMeta {
        table: if tokens { "tokens" } else { "embeddings" }.into(),
        backbone: folder_name(&a.backbone),
        backbone_kind: "bert".into(),
        dim: enc.dim() as usize,
        tokens: tokens.then_some(a.max_length),
        pooling: a.pooling.name().into(),
        preprocessing: serde_json::json!({
            "input": "one text per line", "max_length": a.max_length, "truncation": true,
            "padding": "per batch, masked", "model_type": enc.model.config.model_type,
        })
        .to_string(),
        precision: precision_name(a.precision).into(),
        shard: "0/1".into(),
        row_start: 0,
        row_end: keys.len(),
        rows_total: keys.len(),
    };
    let dummy: Vec<&str> = texts
        .iter()
        .map(String::as_str)
        .take(a.batch_size.max(1))
        .collect();
    let n = if dummy.is_empty() { 0 } else { a.warmup };
    warm_up(n, rep, || {
        Ok(enc
            .embed_tokens(&enc.tokenizer.encode(&dummy)?, a.pooling)?
            .0)
    })?;
    let opts = LoopOptions::new(a.batch_size, a.threads, "texts", a.device);
    let items = Items {
        keys: &keys,
        splits: None,
        values: &texts,
    };
    encode_texts(&enc, a.pooling, items, &a.output, &meta, &opts, rep)
}

/// Settings of `embed image`.
#[derive(Debug, Clone)]
pub struct EmbedImage {
    pub backbone: PathBuf,
    /// `dinov2` or `resnet-ae`; `None` reads it from the folder.
    pub kind: Option<String>,
    pub pooling: String,
    pub normalize: Normalize,
    pub resize: u32,
    pub image_size: u32,
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub batch_size: usize,
    pub device: tch::Device,
    pub precision: tch::Kind,
    pub threads: usize,
    /// Untimed forward passes before the loop (`warm_up`).
    pub warmup: usize,
}

/// Runs `forward` `n` times before the encode loop starts its clock, so that the rates it logs
/// leave out what only the first batches pay (CUDA context, cuBLAS handles, kernel selection).
/// The outputs are copied to the CPU, which waits for a GPU to finish.
fn warm_up(n: usize, rep: &dyn Reporter, forward: impl Fn() -> Result<Tensor>) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        let _ = forward()?.to_device(tch::Device::Cpu);
    }
    rep.log(&format!(
        "warm-up: {n} untimed forward passes in {:.2} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The backbone kind of a vision folder: `config.json`'s `model_type` (`dinov2`, or `resnet-ae`
/// as `convert-resnet-ae` writes it), else a lone `.pt` is taken for the ResNet autoencoder.
pub fn vision_kind(dir: &Path) -> Result<String> {
    let cfg = dir.join("config.json");
    if cfg.is_file() {
        let (path, m) = crate::bert::read_config_json(dir)?;
        let t = m.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        return match t {
            "dinov2" | "resnet-ae" => Ok(t.to_string()),
            other => Err(Error::UnknownModelType {
                path,
                found: other.to_string(),
                supported: "dinov2, resnet-ae".into(),
            }),
        };
    }
    let files = find_weight_files(dir)?;
    if files
        .iter()
        .all(|f| f.extension().is_some_and(|e| e == "pt" || e == "pth"))
    {
        return Ok("resnet-ae".into());
    }
    Err(Error::file(
        dir,
        "no config.json: cannot tell which image backbone this is (pass --kind)",
    ))
}

/// Encodes image files; the key is each file's name (names must be unique).
pub fn embed_image(a: &EmbedImage, rep: &dyn Reporter) -> Result<usize> {
    let mut keys = Vec::with_capacity(a.inputs.len());
    let mut seen = std::collections::HashMap::new();
    for p in &a.inputs {
        let k = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::file(p, "not a file name"))?;
        if let Some(prev) = seen.insert(k.clone(), p.clone()) {
            return Err(Error::DuplicateKey {
                first: prev,
                second: p.clone(),
            });
        }
        keys.push(k);
    }
    let kind = match &a.kind {
        Some(k) => k.clone(),
        None => vision_kind(&a.backbone)?,
    };
    let model = VisionModel::load(&a.backbone, &kind, a.device, a.precision)?;
    let pooling = model.resolve_pooling(&a.pooling)?;
    let pre = match kind.as_str() {
        "dinov2" => Preprocess::Dinov2 {
            resize: a.resize,
            crop: a.image_size,
            normalize: a.normalize,
        },
        _ => Preprocess::ResNetAe {
            resize: a.resize,
            crop: a.image_size,
        },
    };
    model.check_preprocess(&pre)?;
    let tokens = pooling == ImagePooling::Tokens;
    let meta = TableMeta {
        table: if tokens { "tokens" } else { "embeddings" }.into(),
        backbone: folder_name(&a.backbone),
        backbone_kind: kind,
        dim: model.dim(),
        tokens: if tokens {
            Some(model.token_count(a.image_size)?)
        } else {
            None
        },
        pooling: pooling.name().into(),
        preprocessing: pre.describe().to_string(),
        precision: precision_name(a.precision).into(),
        shard: "0/1".into(),
        row_start: 0,
        row_end: keys.len(),
        rows_total: keys.len(),
    };
    warm_up(a.warmup, rep, || {
        let s = a.image_size as i64;
        let b = a.batch_size.max(1) as i64;
        let x = Tensor::zeros(
            [b, model.channels(), s, s],
            (tch::Kind::Float, tch::Device::Cpu),
        );
        model.forward(&x, pooling)
    })?;
    let opts = LoopOptions::new(a.batch_size, a.threads, "images", a.device);
    let items = Items {
        keys: &keys,
        splits: None,
        values: &a.inputs,
    };
    encode_images(
        &model,
        pooling,
        &pre,
        crate::preprocess::TrainCrop::Center,
        items,
        &a.output,
        &meta,
        &opts,
        rep,
    )
}

/// `convert-resnet-ae`: the published torchxrayvision checkpoint (a `torch.save` pickle, in
/// either on-disk format, a state dict or the whole module) to a backbone folder holding
/// `model.safetensors` (every tensor, wrapper prefixes such as `module.` removed) and a
/// `config.json` with `model_type = "resnet-ae"`. The encoder is built from the result to check
/// it before writing.
pub fn convert_resnet_ae(input: &Path, out_dir: &Path) -> Result<String> {
    let tensors = read_file(input)?;
    let n = tensors.len();
    let mut w = Weights::from_tensors(input.display().to_string(), tensors);
    crate::resnet_ae::strip_wrappers(&mut w);
    let enc = ResNetAeEncoder::new(&w, tch::Device::Cpu, tch::Kind::Float)?;
    let mut names: Vec<String> = w.names().map(str::to_string).collect();
    names.sort();
    let tensors: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| {
            let shape = w.shape(n).expect("listed");
            // Non-float buffers (num_batches_tracked) keep their type.
            w.get(n, &shape).map(|t| (n.clone(), t))
        })
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let st = out_dir.join("model.safetensors");
    Tensor::write_safetensors(&tensors, &st).map_err(|e| Error::file(&st, e.to_string()))?;
    let arch = match enc.blocks.as_slice() {
        [3, 4, 23, 2] => "ResNetAE101",
        [3, 4, 6, 3] => "ResNetAE50",
        _ => "ResNetAE",
    };
    let config = serde_json::json!({
        "model_type": "resnet-ae",
        "architecture": arch,
        "blocks": enc.blocks,
        "latent_channels": enc.latent_channels,
        "image_range": [-1024, 1024],
        "resolution": 224,
        "source": input.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    let cfg = out_dir.join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_string_pretty(&config).expect("json") + "\n",
    )
    .map_err(|e| Error::io(&cfg, e))?;
    Ok(format!(
        "{arch}: {n} tensors from {} → {} (latent {} channels, blocks {:?})",
        input.display(),
        st.display(),
        enc.latent_channels,
        enc.blocks
    ))
}
