//! The `zero-shot` stage as the worker runs it (declaration: `stages::kinds::zero_shot`), and the
//! shared space both `zero-shot` and `retrieve` compare in ([`Space`]): the frozen adaptor's image
//! and text paths, or the raw backbone spaces L2-normalised when there is no adaptor.

use std::path::Path;
use std::time::Instant;

use pipeline::{StageContext, StageError};
use tch::{Device, Kind, Tensor};

use crate::bert::{TextEncoder, TextPooling};
use crate::encoder::torch_device;
use crate::evaluate::{dataset_of, defined, features_and_labels, frozen_adaptor, FrozenAdaptor};
use crate::pretrain::{input_name, split_rows};
use artifacts::report::{EvalResult, RESULT_FILE, ZERO_SHOT_HEAD};
use artifacts::table::EmbeddingTable;
use stages::kinds::zero_shot::{PromptPooling, ZeroShotParams};
use stages::pretrain::PROVENANCE_FILE;

/// Where images and texts are compared: through a frozen adaptor, or the raw backbone spaces.
pub struct Space {
    pub(crate) adaptor: Option<FrozenAdaptor>,
    /// `exp(logit_scale)`: the adaptor's learned (or, random-init, initial) scale; 1 without one.
    pub scale: f64,
    pub device: Device,
}

fn l2(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1i64], true)
}

impl Space {
    pub(crate) fn new(adaptor: Option<FrozenAdaptor>, device: Device) -> Space {
        let scale = adaptor
            .as_ref()
            .map_or(1.0, |a| a.model.logit_scale().exp().double_value(&[]));
        Space {
            adaptor,
            scale,
            device,
        }
    }

    /// The mode for results: `pretrained`, `random` or `none`.
    pub fn mode(&self) -> &'static str {
        self.adaptor.as_ref().map_or("none", |a| a.mode)
    }

    /// Checks the widths of the two backbones' vectors against the adaptor (or each other).
    pub fn check_widths(&self, image_dim: i64, text_dim: i64) -> Result<(), StageError> {
        match &self.adaptor {
            Some(a) if a.model.cfg.text_dim != text_dim => Err(format!(
                "the adaptor takes {}-d text vectors; the text backbone gives {text_dim}-d (use \
                 the text backbone the adaptor was pre-trained with)",
                a.model.cfg.text_dim
            )
            .into()),
            Some(_) => Ok(()),
            None if image_dim != text_dim => Err(format!(
                "without an adaptor the image and text vectors are compared as they are, so their \
                 widths must be equal: the image backbone gives {image_dim}-d, the text backbone \
                 {text_dim}-d (bind an `adaptor`)"
            )
            .into()),
            None => Ok(()),
        }
    }

    /// `[N, Dv]` image vectors → `[N, d]`, L2-normalised (per sample), on the CPU.
    pub fn images(&self, x: &Tensor) -> Result<Tensor, StageError> {
        Ok(match &self.adaptor {
            Some(a) => crate::evaluate::through_adaptor(a, x, self.device)?,
            None => l2(&x.to_kind(Kind::Float)),
        })
    }

    /// `[N, Dt]` pooled text vectors → `[N, d]`, L2-normalised, on the CPU.
    pub fn texts(&self, x: &Tensor) -> Result<Tensor, StageError> {
        Ok(match &self.adaptor {
            Some(a) => a
                .model
                .embed_text(&x.to_kind(Kind::Float).to_device(self.device))?
                .to_device(Device::Cpu),
            None => l2(&x.to_kind(Kind::Float)),
        })
    }
}

/// Class embeddings `[C, d]`: per class, the mean of its L2-normalised prompt embeddings
/// (`prompts [P, d]`, `counts[c]` consecutive rows each), L2-normalised again (CLIP's prompt
/// ensembling).
pub fn class_embeddings(prompts: &Tensor, counts: &[usize]) -> Tensor {
    let mut rows = Vec::with_capacity(counts.len());
    let mut start = 0;
    for &n in counts {
        rows.push(
            prompts
                .narrow(0, start as i64, n as i64)
                .mean_dim(0, false, Kind::Float),
        );
        start += n;
    }
    l2(&Tensor::stack(&rows, 0))
}

/// `[N, C]` class probabilities: softmax over classes of `scale · cos(image, class)`, as f64.
pub fn class_probabilities(images: &Tensor, classes: &Tensor, scale: f64) -> Vec<Vec<f64>> {
    let logits = images.matmul(&classes.transpose(0, 1)) * scale;
    let p = logits.softmax(1, Kind::Float).to_kind(Kind::Double);
    let c = classes.size()[0] as usize;
    let flat: Vec<f64> = Vec::try_from(&p.flatten(0, -1)).expect("a double tensor converts");
    flat.chunks(c).map(<[f64]>::to_vec).collect()
}

/// What `classify` reports for one split, from zero-shot probabilities: binary tasks score the
/// positive class's probability (AUROC), multiclass ones every class.
pub fn split_scores(
    labels: &[i64],
    probs: &[Vec<f64>],
    binary: bool,
) -> std::collections::BTreeMap<String, f64> {
    let flat: Vec<f64> = if binary {
        probs.iter().map(|p| p[1]).collect()
    } else {
        probs.iter().flatten().copied().collect()
    };
    let classes = if binary { 1 } else { probs[0].len() };
    defined(&train::scores::classification_scores(
        labels, &flat, classes,
    ))
}

/// A string field of the adaptor's `provenance.json` (`text.backbone`, `text.pooling`, ...).
fn provenance(dir: &Path, section: &str, field: &str) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(PROVENANCE_FILE)).ok()?).ok()?;
    v[section][field].as_str().map(str::to_string)
}

/// The pooling and precision to encode prompts with: the adaptor's training text table's, checked
/// against the parameter and the bound backbone.
fn prompt_encoding(
    ctx: &StageContext,
    p: &ZeroShotParams,
) -> Result<(TextPooling, Kind), StageError> {
    let backbone = input_name(ctx, "backbone")?;
    let Some(a) = ctx.inputs("adaptor").first() else {
        let pooling = match p.pooling {
            PromptPooling::Auto | PromptPooling::Pooler => TextPooling::Pooler,
            PromptPooling::Cls => TextPooling::Cls,
            PromptPooling::Mean => TextPooling::Mean,
        };
        return Ok((pooling, Kind::Float));
    };
    let trained_text = provenance(&a.path, "text", "backbone");
    if let Some(t) = trained_text.as_deref().filter(|t| *t != backbone) {
        return Err(format!(
            "zero-shot: the adaptor was pre-trained on text from backbone `{t}`; the `backbone` \
             input is `{backbone}` (prompts must go through the same frozen text backbone)"
        )
        .into());
    }
    let trained = provenance(&a.path, "text", "pooling").ok_or_else(|| {
        format!(
            "{}: no text.pooling (an adaptor artifact from before provenance recorded it?)",
            a.path.join(PROVENANCE_FILE).display()
        )
    })?;
    let pooling = TextPooling::parse(&trained)
        .filter(|t| *t != TextPooling::Tokens)
        .ok_or_else(|| {
            format!("zero-shot: the adaptor was trained on `{trained}` text; it takes pooled text")
        })?;
    if p.pooling != PromptPooling::Auto && p.pooling.name() != trained {
        return Err(format!(
            "parameter `pooling`: `{}`, but the adaptor was pre-trained on `{trained}`-pooled \
             text (use auto)",
            p.pooling
        )
        .into());
    }
    let precision = match provenance(&a.path, "text", "precision").as_deref() {
        Some("bf16") => Kind::BFloat16,
        _ => Kind::Float,
    };
    Ok((pooling, precision))
}

/// The test (or valid) rows of a table with their labels and probabilities.
fn split_of(
    t: &EmbeddingTable,
    labels: &[i64],
    probs: &[Vec<f64>],
    name: &str,
) -> Result<(Vec<i64>, Vec<Vec<f64>>), StageError> {
    let rows = split_rows(t, name)?;
    Ok((
        rows.iter().map(|&r| labels[r as usize]).collect(),
        rows.iter().map(|&r| probs[r as usize].clone()).collect(),
    ))
}

pub fn run(p: &ZeroShotParams, ctx: &StageContext) -> Result<(), StageError> {
    let t0 = Instant::now();
    let features_dir = &ctx.input("features")?.path;
    let records_dir = &ctx.input("records")?.path;
    let dataset = dataset_of(records_dir)?;
    let (_, label_column) = stages::prompts::classes_of(&dataset)?;
    let classes = stages::prompts::resolve(&dataset, &p.prompts)?;
    let binary = classes.len() == 2;
    let metric = if binary { "auroc" } else { "accuracy" };

    let (table, labels) = features_and_labels(ctx, features_dir, records_dir, label_column)?;

    let device = torch_device(p.device)?;
    let dim = table.meta.dim as i64;
    let seed = p.seed as u64;
    let adaptor = frozen_adaptor(ctx, p.adaptor_init, dim, seed, device)?;
    let space = Space::new(adaptor, device);
    let (pooling, precision) = prompt_encoding(ctx, p)?;
    let bb = ctx.input("backbone")?;
    if !stages::encode::TEXT_BACKBONES.contains(&bb.kind()) {
        return Err(format!(
            "zero-shot: backbone `{}` has kind `{}`; prompts take a text backbone ({})",
            bb.name(),
            bb.kind(),
            stages::encode::TEXT_BACKBONES.join(", ")
        )
        .into());
    }
    let enc = TextEncoder::load(&bb.path, p.max_length as usize, device, precision)?;
    if pooling == TextPooling::Pooler && !enc.model.has_pooler() {
        return Err(format!(
            "zero-shot: {} has no pooler weights; the prompts need the adaptor's pooling",
            bb.path.display()
        )
        .into());
    }
    space.check_widths(dim, enc.dim())?;

    let texts: Vec<&str> = classes
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(String::as_str))
        .collect();
    // One prompt per batch: no padding, so a prompt's vector does not depend on its neighbours.
    let raw: Vec<Tensor> = texts
        .iter()
        .map(|t| Ok(enc.embed(&[t], pooling)?.0))
        .collect::<Result<_, crate::Error>>()?;
    let prompts = space.texts(&Tensor::cat(&raw, 0))?;
    let counts: Vec<usize> = classes.iter().map(|(_, ps)| ps.len()).collect();
    let class_emb = class_embeddings(&prompts, &counts);
    let x = Tensor::from_slice(&table.values).view([table.rows() as i64, dim]);
    let images = space.images(&x)?;
    let probs = class_probabilities(&images, &class_emb, space.scale);

    let (valid_labels, valid_probs) = split_of(&table, &labels, &probs, "valid")?;
    let (test_labels, test_probs) = split_of(&table, &labels, &probs, "test")?;
    if test_labels.is_empty() {
        return Err(format!("{}: no `test` rows", table.path.display()).into());
    }
    let valid = if valid_labels.is_empty() {
        Default::default()
    } else {
        split_scores(&valid_labels, &valid_probs, binary)
    };
    let test = split_scores(&test_labels, &test_probs, binary);
    let mode = space.mode();
    let text = input_name(ctx, "backbone")?;
    let prompts_json = serde_json::json!({
        "classes": classes.iter().map(|(c, _)| c).collect::<Vec<_>>(),
        "prompts": classes.iter().map(|(c, ps)| (c.clone(), ps.clone())).collect::<std::collections::BTreeMap<_, _>>(),
        "defaults": p.prompts.0.is_empty(),
        "pooling": pooling.name(),
        "scale": space.scale,
    });
    let path = ctx.out_dir().join("prompts.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&prompts_json)?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let result = EvalResult {
        instance: ctx.instance().to_string(),
        task: "classification".into(),
        dataset: dataset.clone(),
        metric: metric.into(),
        vision: table.meta.backbone.clone(),
        text,
        adaptor: mode.into(),
        head: ZERO_SHOT_HEAD.into(),
        fraction: 0.0,
        seed: p.seed,
        valid,
        test,
        best_epoch: 0,
        epochs_run: 0,
        train_examples: 0,
        trainable_params: 0,
        seconds: t0.elapsed().as_secs_f64(),
        // No published zero-shot numbers exist; recorded as the probes record it.
        setting: [
            ("text_pooling".to_string(), pooling.name().to_string()),
            (
                "backbone_kind".to_string(),
                table.meta.backbone_kind.clone(),
            ),
        ]
        .into_iter()
        .collect(),
    };
    result.write(&ctx.out_dir().join(RESULT_FILE))?;
    ctx.log(format!(
        "zero-shot {dataset}: {} prompts for {} classes ({} pooling) and {} images through the {mode} \
         adaptor, scale {:.3}: test {metric} {:.4} on {} images",
        texts.len(),
        classes.len(),
        pooling.name(),
        table.rows(),
        space.scale,
        result.test.get(metric).copied().unwrap_or(f64::NAN),
        test_labels.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_adaptor_the_widths_must_match_and_the_error_names_both() {
        let space = Space::new(None, Device::Cpu);
        assert_eq!(space.scale, 1.0);
        assert_eq!(space.mode(), "none");
        let e = space.check_widths(32, 384).unwrap_err().to_string();
        assert!(e.contains("32-d") && e.contains("384-d"), "{e}");
        assert!(space.check_widths(384, 384).is_ok());
    }

    #[test]
    fn class_embeddings_average_the_prompts_of_each_class() {
        let p = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.0, 1.0]).view([3, 2]);
        let c = class_embeddings(&p, &[2, 1]);
        let v: Vec<f32> = Vec::try_from(&c.flatten(0, -1)).unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (v[0] - h).abs() < 1e-6 && (v[1] - h).abs() < 1e-6 && v[3] == 1.0,
            "{v:?}"
        );
        // Scale 0 makes every class equally likely.
        let probs = class_probabilities(&p, &c, 0.0);
        assert!(probs.iter().flatten().all(|x| (x - 0.5).abs() < 1e-12));
    }
}
