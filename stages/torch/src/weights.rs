//! Named weights of a backbone folder, from whichever file the folder holds: `model.safetensors`
//! (single, or sharded with `model.safetensors.index.json`), `pytorch_model.bin` (single or
//! sharded), or one `.pt`/`.pth`. Names are normalised the way transformers does on load
//! (TF-era `LayerNorm.gamma`/`beta`), a model prefix (`bert.`, `dinov2.`, `module.`) is
//! stripped, and every tensor is fetched with the shape the model expects, so a missing or
//! misshapen tensor is an error naming it and that shape. Tensors not asked for (heads such as
//! `cls.*`, a decoder) are ignored.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::error::{shape_str, Error, Result};
use crate::pickle;

/// The weight files of a folder, in the order they are looked for.
pub fn find_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "backbone folder not found"));
    }
    for (single, index) in [
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ] {
        let p = dir.join(single);
        if p.is_file() {
            return Ok(vec![p]);
        }
        let idx = dir.join(index);
        if idx.is_file() {
            return shards_of(&idx);
        }
    }
    // A lone checkpoint under another name (the torchxrayvision `.pt`, a converted file).
    let mut others: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "safetensors" | "pt" | "pth" | "bin"))
        })
        .collect();
    others.sort();
    match others.len() {
        1 => Ok(others),
        0 => Err(Error::file(
            dir,
            "no weights found (expected model.safetensors, model.safetensors.index.json, \
             pytorch_model.bin or a single .pt file)",
        )),
        _ => Err(Error::file(
            dir,
            format!(
                "several candidate weight files ({}); keep one, or name it model.safetensors",
                others
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The shard files an index (`weight_map`: tensor → file) names, in order, each once.
fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, "no `weight_map` object"))?;
    let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for f in files {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(Error::file(
                index,
                format!("shard `{f}` named in weight_map does not exist"),
            ));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(Error::file(index, "`weight_map` names no shard"));
    }
    Ok(out)
}

/// Loads every tensor of one file (safetensors or a PyTorch pickle), on the CPU.
pub fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        Tensor::read_safetensors(path).map_err(|e| Error::file(path, e.to_string()))
    } else {
        pickle::load(path)
    }
}

/// The weights of one model, by name, with shape-checked access.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// The file or folder, for messages.
    source: String,
    device: Device,
    kind: Kind,
}

impl Weights {
    /// Reads the weights of `dir` (see [`find_weight_files`]).
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let files = find_weight_files(dir)?;
        let mut all = Vec::new();
        for f in &files {
            all.extend(read_file(f)?);
        }
        let source = if files.len() == 1 {
            files[0].display().to_string()
        } else {
            format!("{} ({} shards)", dir.display(), files.len())
        };
        Ok(Self::from_tensors(source, all))
    }

    pub fn from_tensors(source: impl Into<String>, tensors: Vec<(String, Tensor)>) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| (normalise_name(&k), v))
            .collect();
        Weights {
            tensors,
            source: source.into(),
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }

    /// Moves tensors to `device` and floating-point ones to `kind` as they are taken.
    pub fn with_target(mut self, device: Device, kind: Kind) -> Self {
        self.device = device;
        self.kind = kind;
        self
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// If some names start with `prefix` (`bert.`), keeps those, without it, and drops the
    /// others (heads); otherwise changes nothing. Returns whether the prefix was found.
    pub fn strip_prefix(&mut self, prefix: &str) -> bool {
        if !self.tensors.keys().any(|k| k.starts_with(prefix)) {
            return false;
        }
        let old = std::mem::take(&mut self.tensors);
        self.tensors = old
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v)))
            .collect();
        true
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(Tensor::size)
    }

    /// The shape of a tensor that must exist (used to read sizes off the weights).
    pub fn require_shape(&self, name: &str, what: &str) -> Result<Vec<i64>> {
        self.shape(name).ok_or_else(|| Error::MissingTensor {
            file: self.source.clone(),
            name: name.to_string(),
            expected: what.to_string(),
        })
    }

    /// The tensor `name`, which must have `shape`, converted to the target device and kind.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.get_any(&[name], shape)
    }

    /// The first of `names` present (alternative layouts of the same weight).
    pub fn get_any(&self, names: &[&str], shape: &[i64]) -> Result<Tensor> {
        let Some((name, t)) = names
            .iter()
            .find_map(|n| self.tensors.get(*n).map(|t| (*n, t)))
        else {
            return Err(Error::MissingTensor {
                file: self.source.clone(),
                name: names[0].to_string(),
                expected: shape_str(shape),
            });
        };
        if t.size() != shape {
            return Err(Error::TensorShape {
                file: self.source.clone(),
                name: name.to_string(),
                found: shape_str(&t.size()),
                expected: shape_str(shape),
            });
        }
        let kind = if t.is_floating_point() {
            self.kind
        } else {
            t.kind()
        };
        Ok(t.f_to_device(self.device)?
            .f_to_kind(kind)?
            .f_contiguous()?)
    }

    /// Like [`Weights::get`], but `None` when absent (a misshapen tensor is still an error).
    pub fn get_opt(&self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// transformers' load-time renames of TF-era checkpoints (`LayerNorm.gamma` → `.weight`,
/// `LayerNorm.beta` → `.bias`), which old BERT checkpoints such as BioBERT's still use.
fn normalise_name(name: &str) -> String {
    if let Some(stem) = name.strip_suffix(".gamma") {
        if stem.ends_with("LayerNorm") {
            return format!("{stem}.weight");
        }
    }
    if let Some(stem) = name.strip_suffix(".beta") {
        if stem.ends_with("LayerNorm") {
            return format!("{stem}.bias");
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_gamma_beta_are_renamed() {
        assert_eq!(
            normalise_name("bert.embeddings.LayerNorm.gamma"),
            "bert.embeddings.LayerNorm.weight"
        );
        assert_eq!(normalise_name("x.LayerNorm.beta"), "x.LayerNorm.bias");
        assert_eq!(normalise_name("x.beta"), "x.beta");
    }

    #[test]
    fn shape_errors_name_the_tensor_and_the_expected_shape() {
        let w = Weights::from_tensors(
            "f.safetensors",
            vec![(
                "a".into(),
                Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
            )],
        );
        let e = w.get("a", &[3, 2]).unwrap_err().to_string();
        assert_eq!(
            e,
            "f.safetensors: tensor `a` has shape [2, 3], expected [3, 2]"
        );
        let e = w.get("b.weight", &[4]).unwrap_err().to_string();
        assert_eq!(
            e,
            "f.safetensors: tensor `b.weight` is missing (expected shape [4])"
        );
    }

    #[test]
    fn prefix_is_stripped_only_when_present() {
        let t = || Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let mut w = Weights::from_tensors("x", vec![("bert.a".into(), t()), ("cls.b".into(), t())]);
        assert!(w.strip_prefix("bert."));
        assert_eq!(w.names().collect::<Vec<_>>(), ["a"]);
        let mut w = Weights::from_tensors("x", vec![("a".into(), t())]);
        assert!(!w.strip_prefix("bert."));
        assert!(w.contains("a"));
    }
}
