//! The Adaptor behind one type, whatever the variant: construction, forward passes, embeddings
//! and checkpoints (`NAME.safetensors` with the config as `NAME.json` beside it).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::{AdaptorConfig, Precision, Variant};
use crate::data::Batch;
use crate::error::{io_err, Error, Result};
use crate::fusion::FusionAdaptor;
use crate::loss::{clip_loss, logits_per_text};
use crate::nn::Mode;
use crate::original::{ImageOnly, OriginalAdaptor};
use crate::params::{read_safetensors, write_safetensors, ParamStore};

pub enum Model {
    Original(OriginalAdaptor),
    Fusion(FusionAdaptor),
}

pub struct Adaptor {
    pub cfg: AdaptorConfig,
    params: ParamStore,
    model: Model,
}

/// A forward pass on a batch.
pub struct Forward {
    /// What training minimises: `contrastive` (+ `itm_weight · itm` for fusion).
    pub loss: Tensor,
    pub contrastive: Tensor,
    pub itm: Option<Tensor>,
    /// L2-normalised embeddings `[B, d]` used by the contrastive loss and for retrieval.
    pub image: Tensor,
    pub text: Tensor,
    pub logits_per_text: Tensor,
}

/// The JSON written beside a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// `adaptor-checkpoint/1`.
    pub format: String,
    pub model: AdaptorConfig,
    /// The training run that produced it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<crate::config::TrainConfig>,
    /// Epochs completed when it was saved (1-based), and the optimizer steps taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

pub const CHECKPOINT_FORMAT: &str = "adaptor-checkpoint/1";

impl CheckpointInfo {
    pub fn new(model: AdaptorConfig) -> Self {
        CheckpointInfo {
            format: CHECKPOINT_FORMAT.into(),
            model,
            train: None,
            epoch: None,
            step: None,
            val_loss: None,
        }
    }
}

/// `x.safetensors` → `x.json`.
pub fn config_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("json")
}

impl Adaptor {
    /// A freshly initialised model (PyTorch's default initialisation scheme, values from `seed`).
    pub fn new(cfg: &AdaptorConfig, device: Device, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut params = ParamStore::new(device);
        let model = match cfg.variant {
            Variant::Original => Model::Original(OriginalAdaptor::new(&mut params, cfg, seed)),
            Variant::Fusion => Model::Fusion(FusionAdaptor::new(&mut params, cfg, seed)),
        };
        Ok(Adaptor {
            cfg: cfg.clone(),
            params,
            model,
        })
    }

    /// Loads `path` (a safetensors file with exactly this model's tensors; for `original`, a
    /// PyTorch `state_dict` of the original module saved with safetensors works too).
    pub fn load(cfg: &AdaptorConfig, path: &Path, device: Device) -> Result<Self> {
        let m = Self::new(cfg, device, 0)?;
        m.params.load(&read_safetensors(path)?, path)?;
        Ok(m)
    }

    /// Loads a checkpoint written by [`Adaptor::save`], taking the config from the JSON beside it.
    pub fn from_checkpoint(path: &Path, device: Device) -> Result<(Self, CheckpointInfo)> {
        let info_path = config_path(path);
        let text = fs::read_to_string(&info_path).map_err(io_err(&info_path))?;
        let info: CheckpointInfo = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: info_path.clone(),
            source: e,
        })?;
        Ok((Self::load(&info.model, path, device)?, info))
    }

    /// Writes the weights (state-dict names, safetensors) and `info` as JSON beside them.
    pub fn save(&self, path: &Path, info: &CheckpointInfo) -> Result<()> {
        let meta = BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            (
                "adaptor.variant".to_string(),
                format!("{:?}", self.cfg.variant).to_lowercase(),
            ),
        ]);
        write_safetensors(path, &self.params.snapshot(), &meta)?;
        let info_path = config_path(path);
        let json = serde_json::to_string_pretty(info).expect("checkpoint info serialises") + "\n";
        let tmp = info_path.with_extension("json.tmp");
        fs::write(&tmp, json).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &info_path).map_err(io_err(&info_path))
    }

    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn device(&self) -> Device {
        self.params.device()
    }

    /// Trainable scalars (every parameter is trainable).
    pub fn num_trainable_params(&self) -> i64 {
        self.params.numel()
    }

    pub fn logit_scale(&self) -> &Tensor {
        match &self.model {
            Model::Original(m) => &m.logit_scale,
            Model::Fusion(m) => &m.logit_scale,
        }
    }

    /// Loss and embeddings for a batch; dropout follows `mode.train`.
    pub fn forward(&self, batch: &Batch, mode: Mode) -> Result<Forward> {
        match &self.model {
            Model::Original(m) => {
                let Batch::Pooled { image, text } = batch else {
                    return Err(Error::Data(
                        "the original variant takes pooled vectors, not token sequences".into(),
                    ));
                };
                let (v, t) = m.embed_pair(image, text, mode)?;
                let logits = logits_per_text(&t, &v, &m.logit_scale);
                let loss = clip_loss(&logits, self.cfg.image_weight);
                Ok(Forward {
                    contrastive: loss.shallow_clone(),
                    loss,
                    itm: None,
                    image: v,
                    text: t,
                    logits_per_text: logits,
                })
            }
            Model::Fusion(m) => {
                let (i, im, t, tm) = batch.as_tokens();
                let out = m.forward(&i, &im, &t, &tm, mode)?;
                let loss = match &out.itm {
                    Some(itm) => &out.contrastive + itm * self.cfg.fusion.itm_weight,
                    None => out.contrastive.shallow_clone(),
                };
                Ok(Forward {
                    loss,
                    contrastive: out.contrastive,
                    itm: out.itm,
                    image: out.image,
                    text: out.text,
                    logits_per_text: out.logits_per_text,
                })
            }
        }
    }

    /// Retrieval embeddings `(image, text)` in evaluation mode, without gradient.
    pub fn embed(&self, batch: &Batch, precision: Precision) -> Result<(Tensor, Tensor)> {
        let mode = Mode::new(false, precision);
        tch::no_grad(|| match &self.model {
            Model::Original(m) => match batch {
                Batch::Pooled { image, text } => m.embed_pair(image, text, mode),
                Batch::Tokens { .. } => Err(Error::Data(
                    "the original variant takes pooled vectors, not token sequences".into(),
                )),
            },
            Model::Fusion(m) => {
                let (i, im, t, tm) = batch.as_tokens();
                Ok(FusionAdaptor::embeddings(
                    &m.streams(&i, &im, &t, &tm, mode)?,
                ))
            }
        })
    }

    /// The text-only path on pooled vectors `[B, Dt]`, evaluation mode, no gradient: the
    /// embeddings zero-shot prompts and retrieved reports are compared in. The original variant
    /// only (the fusion variant's text stream takes token sequences).
    pub fn embed_text(&self, text: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| match &self.model {
            Model::Original(m) => m.embed_text(text, Mode::EVAL),
            Model::Fusion(_) => Err(Error::Data(
                "the fusion variant has no text-only path on pooled vectors; zero-shot and \
                 retrieval take an `original` adaptor"
                    .into(),
            )),
        })
    }

    /// The image-only (downstream) path, evaluation mode, no gradient. `image` is `[B, Dv]` or
    /// `[B, N, Dv]`; `mask [B, N]` applies to the fusion variant's tokens. `how` chooses the
    /// original's batch-attending behaviour for 2-D inputs (reference G.6); the default
    /// [`ImageOnly::PerSample`] never mixes samples.
    pub fn embed_image(
        &self,
        image: &Tensor,
        mask: Option<&Tensor>,
        how: ImageOnly,
    ) -> Result<Tensor> {
        tch::no_grad(|| match &self.model {
            Model::Original(m) => m.embed_image(image, how, Mode::EVAL),
            Model::Fusion(m) => {
                let (tokens, mask) = match (image.dim(), mask) {
                    (2, _) => (
                        image.unsqueeze(1),
                        Tensor::ones([image.size()[0], 1], (tch::Kind::Bool, image.device())),
                    ),
                    (3, Some(mask)) => (image.shallow_clone(), mask.shallow_clone()),
                    (3, None) => (
                        image.shallow_clone(),
                        Tensor::ones(
                            [image.size()[0], image.size()[1]],
                            (tch::Kind::Bool, image.device()),
                        ),
                    ),
                    (_, _) => return Err(Error::image_rank(image)),
                };
                m.embed_image(&tokens, &mask, Mode::EVAL)
            }
        })
    }
}
