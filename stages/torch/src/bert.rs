//! BERT-family text encoders (BERT, BioBERT, ClinicalBERT, PubMedBERT, CXR-BERT loaded as a plain
//! `BertModel`, as the original does; reference B.1) from a local Hugging Face folder, as
//! transformers' `BertModel` computes them, with the tokenizer of the folder.
//!
//! Padding is per batch and the attention mask is always applied, in attention and in pooling
//! (offline-assets.md: the MiniLM tokenizer's fixed padding to 128 is a trap).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};
use crate::nn::{Activation, LayerNorm, Linear, LoadLayerNorm, LoadLinear, Mode};
use crate::weights::Weights;

/// `model_type`s loaded as a plain BERT. CXR-BERT's config says `cxr-bert`; the original loads
/// it with `BertModel.from_pretrained` all the same. Configs without `model_type` (old hub
/// uploads such as BioBERT's) are read as BERT too.
pub const MODEL_TYPES: &[&str] = &["bert", "cxr-bert"];

/// What `config.json` says, with transformers' `BertConfig` defaults for absent fields.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: Activation,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
}

/// Reads `config.json`: a JSON object.
pub fn read_config_json(dir: &Path) -> Result<(PathBuf, serde_json::Map<String, Json>)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Json = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?;
    match v {
        Json::Object(m) => Ok((path, m)),
        _ => Err(Error::file(&path, "not a JSON object")),
    }
}

/// A config field: `default` when absent or null, else `parse` of it; an error names the file,
/// the field and what it should be.
fn field<T>(
    path: &Path,
    m: &serde_json::Map<String, Json>,
    name: &str,
    default: T,
    what: &str,
    parse: impl Fn(&Json) -> Option<T>,
) -> Result<T> {
    match m.get(name) {
        None | Some(Json::Null) => Ok(default),
        Some(v) => {
            parse(v).ok_or_else(|| Error::file(path, format!("`{name}` is not {what}: {v}")))
        }
    }
}

pub(crate) fn int_field(
    path: &Path,
    m: &serde_json::Map<String, Json>,
    name: &str,
    default: i64,
) -> Result<i64> {
    field(path, m, name, default, "a non-negative integer", |v| {
        v.as_i64().filter(|&i| i >= 0)
    })
}

pub(crate) fn float_field(
    path: &Path,
    m: &serde_json::Map<String, Json>,
    name: &str,
    default: f64,
) -> Result<f64> {
    field(path, m, name, default, "a number", Json::as_f64)
}

impl BertConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let (path, m) = read_config_json(dir)?;
        let model_type = field(&path, &m, "model_type", "bert".into(), "a string", |v| {
            v.as_str().map(str::to_string)
        })?;
        if !MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(Error::UnknownModelType {
                path,
                found: model_type,
                supported: MODEL_TYPES.join(", "),
            });
        }
        if let Some(p) = m.get("position_embedding_type").and_then(Json::as_str) {
            if p != "absolute" {
                return Err(Error::file(
                    &path,
                    format!("position_embedding_type `{p}` is not supported (only `absolute`)"),
                ));
            }
        }
        let act = m.get("hidden_act").and_then(Json::as_str).unwrap_or("gelu");
        let hidden_act = Activation::parse(act).ok_or_else(|| {
            Error::file(
                &path,
                format!(
                    "hidden_act `{act}` is not supported (supported: {})",
                    Activation::NAMES.join(", ")
                ),
            )
        })?;
        let c = BertConfig {
            model_type,
            vocab_size: int_field(&path, &m, "vocab_size", 30522)?,
            hidden_size: int_field(&path, &m, "hidden_size", 768)?,
            num_hidden_layers: int_field(&path, &m, "num_hidden_layers", 12)?,
            num_attention_heads: int_field(&path, &m, "num_attention_heads", 12)?,
            intermediate_size: int_field(&path, &m, "intermediate_size", 3072)?,
            hidden_act,
            max_position_embeddings: int_field(&path, &m, "max_position_embeddings", 512)?,
            type_vocab_size: int_field(&path, &m, "type_vocab_size", 2)?,
            layer_norm_eps: float_field(&path, &m, "layer_norm_eps", 1e-12)?,
            pad_token_id: int_field(&path, &m, "pad_token_id", 0)?,
        };
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(Error::file(
                &path,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    c.hidden_size, c.num_attention_heads
                ),
            ));
        }
        Ok(c)
    }
}

/// How one text becomes one vector (or a sequence of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// `tanh(W · h_[CLS] + b)`: transformers' `pooler_output`, the original's choice.
    Pooler,
    /// `h_[CLS]` of the last layer.
    Cls,
    /// Mean of the last layer over real (unmasked) tokens.
    Mean,
    /// The whole last layer, padded positions zeroed.
    Tokens,
}

impl TextPooling {
    pub const NAMES: &'static [&'static str] = &["pooler", "cls", "mean", "tokens"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pooler" => Some(TextPooling::Pooler),
            "cls" => Some(TextPooling::Cls),
            "mean" => Some(TextPooling::Mean),
            "tokens" => Some(TextPooling::Tokens),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TextPooling::Pooler => "pooler",
            TextPooling::Cls => "cls",
            TextPooling::Mean => "mean",
            TextPooling::Tokens => "tokens",
        }
    }
}

/// A tokenised batch, padded to its longest row, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    pub mask: Vec<i64>,
}

/// The folder's tokenizer with its own padding disabled and truncation to `max_length` tokens
/// (special tokens included), as `tokenizer(texts, truncation=True, max_length=L)` does.
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: i64,
    max_length: usize,
}

impl TextTokenizer {
    /// `tokenizer.json` if present, else a BERT WordPiece tokenizer over `vocab.txt` (lower-casing
    /// as `tokenizer_config.json`'s `do_lower_case` says, true by default, as transformers does).
    pub fn load(dir: &Path, max_length: usize, config_pad_id: i64) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| Error::file(&json, e.to_string()))?
        } else if vocab.is_file() {
            wordpiece_tokenizer(dir, &vocab)?
        } else {
            return Err(Error::file(dir, "no tokenizer.json or vocab.txt"));
        };
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::file(dir, format!("tokenizer truncation: {e}")))?;
        let pad_id = inner
            .token_to_id("[PAD]")
            .map(i64::from)
            .unwrap_or(config_pad_id);
        Ok(TextTokenizer {
            inner,
            pad_id,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokenises `texts` (special tokens added) and pads them to the longest.
    pub fn encode(&self, texts: &[&str]) -> Result<TokenBatch> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let len = enc.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let rows = texts.len();
        let mut b = TokenBatch {
            rows,
            len,
            ids: vec![self.pad_id; rows * len],
            type_ids: vec![0; rows * len],
            mask: vec![0; rows * len],
        };
        for (r, e) in enc.iter().enumerate() {
            let o = r * len;
            for (j, ((&id, &ty), &m)) in e
                .get_ids()
                .iter()
                .zip(e.get_type_ids())
                .zip(e.get_attention_mask())
                .enumerate()
            {
                b.ids[o + j] = id as i64;
                b.type_ids[o + j] = ty as i64;
                b.mask[o + j] = m as i64;
            }
        }
        Ok(b)
    }
}

fn wordpiece_tokenizer(dir: &Path, vocab: &Path) -> Result<Tokenizer> {
    let cfg_path = dir.join("tokenizer_config.json");
    let (lowercase, strip_accents, chinese) = if cfg_path.is_file() {
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let v: Json = serde_json::from_str(&text)
            .map_err(|e| Error::file(&cfg_path, format!("invalid JSON: {e}")))?;
        (
            v.get("do_lower_case")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            v.get("strip_accents").and_then(Json::as_bool),
            v.get("tokenize_chinese_chars")
                .and_then(Json::as_bool)
                .unwrap_or(true),
        )
    } else {
        (true, None, true)
    };
    let bad = |e: tokenizers::Error| Error::file(vocab, e.to_string());
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(bad)?;
    use tokenizers::Model;
    let id = |t: &str| {
        model.token_to_id(t).ok_or_else(|| {
            Error::file(vocab, format!("special token {t} is not in the vocabulary"))
        })
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter(|t| model.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(
        true,
        chinese,
        strip_accents,
        lowercase,
    )))
    .map_err(bad)?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    tok.add_special_tokens(specials).map_err(bad)?;
    Ok(tok)
}

struct BertLayer {
    /// query, key and value stacked into one projection: `[3H, H]`.
    qkv: Linear,
    attn_out: Linear,
    ln1: LayerNorm,
    intermediate: Linear,
    output: Linear,
    ln2: LayerNorm,
}

/// transformers' `BertModel` in inference mode.
pub struct BertModel {
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: LayerNorm,
    layers: Vec<BertLayer>,
    pooler: Option<Linear>,
    device: Device,
}

impl BertModel {
    /// Builds the model from `weights` (already prefix-stripped), checking every shape.
    pub fn new(config: BertConfig, w: &Weights, device: Device) -> Result<Self> {
        let h = config.hidden_size;
        let i = config.intermediate_size;
        let eps = config.layer_norm_eps;
        let lin = |p: &str, o: i64, n: i64| Linear::load(w, p, o, n, true);
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = lin(&format!("{p}.attention.self.query"), h, h)?;
            let k = lin(&format!("{p}.attention.self.key"), h, h)?;
            let v = lin(&format!("{p}.attention.self.value"), h, h)?;
            layers.push(BertLayer {
                qkv: Linear::stack(&[q, k, v]),
                attn_out: lin(&format!("{p}.attention.output.dense"), h, h)?,
                ln1: LayerNorm::load(w, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: lin(&format!("{p}.intermediate.dense"), i, h)?,
                output: lin(&format!("{p}.output.dense"), h, i)?,
                ln2: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        // Sentence-embedding checkpoints may lack the pooler; it is only an error when asked for.
        let pooler = if w.contains("pooler.dense.weight") {
            Some(lin("pooler.dense", h, h)?)
        } else {
            None
        };
        Ok(BertModel {
            word: w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: w.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size.max(1), h],
            )?,
            emb_ln: LayerNorm::load(w, "embeddings.LayerNorm", h, eps)?,
            layers,
            pooler,
            config,
            device,
        })
    }

    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The last layer `[B, L, H]` for a tokenised batch.
    pub fn forward(&self, batch: &TokenBatch) -> Result<(Tensor, Tensor)> {
        let (b, l) = (batch.rows as i64, batch.len as i64);
        if l > self.config.max_position_embeddings {
            return Err(Error::InputShape {
                model: "BERT",
                expected: format!(
                    "at most max_position_embeddings {} tokens",
                    self.config.max_position_embeddings
                ),
                found: format!("{l} tokens"),
            });
        }
        let dev = self.device;
        let ids = Tensor::from_slice(&batch.ids).view([b, l]).to_device(dev);
        let types = Tensor::from_slice(&batch.type_ids)
            .view([b, l])
            .to_device(dev);
        let mask = Tensor::from_slice(&batch.mask).view([b, l]).to_device(dev);
        if let Some(&bad) = batch
            .ids
            .iter()
            .find(|&&i| i < 0 || i >= self.config.vocab_size)
        {
            return Err(Error::parameter(
                "token id",
                bad,
                format!(
                    "is outside the vocabulary of {} (tokenizer and model do not match)",
                    self.config.vocab_size
                ),
            ));
        }
        let pos = Tensor::arange(l, (Kind::Int64, dev)).unsqueeze(0);
        // transformers: (inputs_embeds + token_type_embeddings) + position_embeddings
        let x = Tensor::embedding(&self.word, &ids, -1, false, false)
            + Tensor::embedding(&self.token_type, &types, -1, false, false);
        let x = x + Tensor::embedding(&self.position, &pos, -1, false, false);
        let mut x = self.emb_ln.forward(&x);
        // Boolean mask broadcast over heads and queries: true = attend.
        let attend = mask.ne(0).view([b, 1, 1, l]);
        let heads = self.config.num_attention_heads;
        let hd = self.config.hidden_size / heads;
        for layer in &self.layers {
            let qkv = layer
                .qkv
                .forward(&x, Mode::EVAL)
                .view([b, l, 3, heads, hd])
                .permute([2, 0, 3, 1, 4]);
            let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            let a = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&attend),
                0.0,
                false,
                None,
                false,
            );
            let a = a.transpose(1, 2).reshape([b, l, self.config.hidden_size]);
            x = layer
                .ln1
                .forward(&(layer.attn_out.forward(&a, Mode::EVAL) + &x));
            let hmid = self
                .config
                .hidden_act
                .apply(&layer.intermediate.forward(&x, Mode::EVAL));
            x = layer
                .ln2
                .forward(&(layer.output.forward(&hmid, Mode::EVAL) + &x));
        }
        Ok((x, mask))
    }

    /// Pools the last layer: `[B, H]`, or `[B, L, H]` for [`TextPooling::Tokens`].
    pub fn pool(&self, hidden: &Tensor, mask: &Tensor, pooling: TextPooling) -> Result<Tensor> {
        Ok(match pooling {
            TextPooling::Pooler => {
                let p = self.pooler.as_ref().ok_or_else(|| {
                    Error::parameter(
                        "pooling",
                        "`pooler`",
                        "needs the tensors `pooler.dense.weight` [H, H] and `pooler.dense.bias` \
                         [H], which this checkpoint lacks; use `cls` or `mean`",
                    )
                })?;
                p.forward(&hidden.select(1, 0), Mode::EVAL).tanh()
            }
            TextPooling::Cls => hidden.select(1, 0),
            TextPooling::Mean => {
                let m = mask.unsqueeze(-1).to_kind(hidden.kind());
                (hidden * &m).sum_dim_intlist(1, false, None)
                    / m.sum_dim_intlist(1, false, None).clamp_min(1e-9)
            }
            TextPooling::Tokens => hidden * mask.unsqueeze(-1).to_kind(hidden.kind()),
        })
    }
}

/// A BERT folder ready to encode: tokenizer plus model.
pub struct TextEncoder {
    pub tokenizer: TextTokenizer,
    pub model: BertModel,
}

impl TextEncoder {
    pub fn load(dir: &Path, max_length: usize, device: Device, kind: Kind) -> Result<Self> {
        let config = BertConfig::load(dir)?;
        if max_length as i64 > config.max_position_embeddings {
            return Err(Error::parameter(
                "max_length",
                max_length,
                format!(
                    "exceeds the model's max_position_embeddings {}",
                    config.max_position_embeddings
                ),
            ));
        }
        if max_length < 2 {
            return Err(Error::parameter(
                "max_length",
                max_length,
                "must be at least 2 ([CLS] and [SEP])",
            ));
        }
        let tokenizer = TextTokenizer::load(dir, max_length, config.pad_token_id)?;
        let mut weights = Weights::load_dir(dir)?.with_target(device, kind);
        weights.strip_prefix("bert.");
        let model = BertModel::new(config, &weights, device)?;
        Ok(TextEncoder { tokenizer, model })
    }

    pub fn dim(&self) -> i64 {
        self.model.config.hidden_size
    }

    /// Embeds `texts`: `[B, H]` (or `[B, L, H]` for tokens) as f32 on the CPU, and the mask.
    pub fn embed(&self, texts: &[&str], pooling: TextPooling) -> Result<(Tensor, Tensor)> {
        let batch = self.tokenizer.encode(texts)?;
        self.embed_tokens(&batch, pooling)
    }

    pub fn embed_tokens(
        &self,
        batch: &TokenBatch,
        pooling: TextPooling,
    ) -> Result<(Tensor, Tensor)> {
        let _guard = tch::no_grad_guard();
        let (h, mask) = self.model.forward(batch)?;
        let pooled = self.model.pool(&h, &mask, pooling)?;
        Ok((
            pooled.to_kind(Kind::Float).to_device(Device::Cpu),
            mask.to_device(Device::Cpu),
        ))
    }
}
