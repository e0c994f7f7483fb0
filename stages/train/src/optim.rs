//! AdamW with PyTorch's single-tensor update (decoupled decay `p ← p(1 − lr·wd)` first), whose
//! state can be saved and restored exactly, and the linear warm-up/decay schedule of
//! `transformers.get_linear_schedule_with_warmup`.

use tch::{Kind, Tensor};

use crate::params::ParamStore;

/// Which parameters get weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecayPolicy {
    /// Every parameter, as the original (`AdamW(self.parameters(), weight_decay=0.01)`).
    All,
    /// Not LayerNorm weights, biases or the logit scale.
    WeightsOnly,
}

impl DecayPolicy {
    pub fn decays(self, name: &str) -> bool {
        match self {
            DecayPolicy::All => true,
            DecayPolicy::WeightsOnly => {
                let leaf = name.rsplit('.').next().unwrap_or(name);
                let norm = name
                    .rsplit('.')
                    .nth(1)
                    .is_some_and(|module| module.starts_with("norm") || module.ends_with("norm"));
                !(name.ends_with("bias") || norm || leaf == "logit_scale")
            }
        }
    }
}

pub struct AdamW {
    params: Vec<(String, Tensor)>,
    decay: Vec<bool>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Optimizer steps taken (PyTorch keeps one per parameter; they are always equal here).
    step: u64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(
        params: &ParamStore,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        policy: DecayPolicy,
    ) -> Self {
        let params: Vec<(String, Tensor)> = params
            .iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect();
        let zeros = |t: &Tensor| t.zeros_like().detach();
        AdamW {
            decay: params.iter().map(|(n, _)| policy.decays(n)).collect(),
            exp_avg: params.iter().map(|(_, t)| zeros(t)).collect(),
            exp_avg_sq: params.iter().map(|(_, t)| zeros(t)).collect(),
            params,
            step: 0,
            betas,
            eps,
            weight_decay,
        }
    }

    /// AdamW where `decays(name, tensor)` picks the parameters that get weight decay (e.g. only
    /// weight matrices, for a head whose BatchNorm is named by a `Sequential` index).
    pub fn with_decay(
        params: &ParamStore,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        decays: impl Fn(&str, &Tensor) -> bool,
    ) -> Self {
        let mut opt = AdamW::new(params, betas, eps, weight_decay, DecayPolicy::All);
        opt.decay = opt.params.iter().map(|(n, t)| decays(n, t)).collect();
        opt
    }

    /// Whether each parameter (in store order) gets weight decay.
    pub fn decay_mask(&self) -> Vec<(&str, bool)> {
        self.params
            .iter()
            .zip(&self.decay)
            .map(|((n, _), d)| (n.as_str(), *d))
            .collect()
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update at learning rate `lr`. Parameters without a gradient are skipped (as PyTorch
    /// skips `grad is None`).
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = lr / bc1;
        for i in 0..self.params.len() {
            let p = &mut self.params[i].1;
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            if self.decay[i] && self.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let m = &mut self.exp_avg[i];
            let _ = m.lerp_(&g, 1.0 - b1);
            let v = &mut self.exp_avg_sq[i];
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(&g * (1.0 - b2) * &g));
            let denom = (v.sqrt() / bc2_sqrt).g_add_scalar_(self.eps);
            let _ = p.g_add_(&((&*m * -step_size) / denom));
        }
    }

    /// The moments, named `exp_avg.NAME` and `exp_avg_sq.NAME`, on the CPU.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.detach().to_device(tch::Device::Cpu).copy();
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), cpu(&self.exp_avg[i])));
            out.push((format!("exp_avg_sq.{name}"), cpu(&self.exp_avg_sq[i])));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], step: u64) -> Result<(), String> {
        let find = |n: &str| tensors.iter().find(|(m, _)| m == n).map(|(_, t)| t);
        let _guard = tch::no_grad_guard();
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (prefix, dst) in [
                ("exp_avg", &mut self.exp_avg[i]),
                ("exp_avg_sq", &mut self.exp_avg_sq[i]),
            ] {
                let key = format!("{prefix}.{name}");
                let src =
                    find(&key).ok_or_else(|| format!("optimizer state `{key}` is missing"))?;
                if src.size() != p.size() {
                    return Err(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        src.size(),
                        p.size()
                    ));
                }
                dst.copy_(&src.to_kind(Kind::Float));
            }
        }
        self.step = step;
        Ok(())
    }
}

/// `get_linear_schedule_with_warmup`: the factor on the base learning rate at scheduler step `s`
/// is `s / warmup` during warm-up, then `(total − s) / (total − warmup)`, never below zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub total_steps: u64,
    pub warmup_steps: u64,
}

impl LinearSchedule {
    /// Warm-up over `int(fraction · total)` steps, as the original.
    pub fn new(total_steps: u64, warmup_fraction: f64) -> Self {
        LinearSchedule {
            total_steps,
            warmup_steps: (warmup_fraction * total_steps as f64) as u64,
        }
    }

    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let left = self.total_steps.saturating_sub(step) as f64;
            (left / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        // total 100, warm-up int(0.02·100) = 2: 0, 0.5, then (100 − s)/98.
        let s = LinearSchedule::new(100, 0.02);
        assert_eq!(s.warmup_steps, 2);
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(1), 0.5);
        assert_eq!(s.factor(2), 1.0);
        assert!((s.factor(51) - 49.0 / 98.0).abs() < 1e-15);
        assert_eq!(s.factor(100), 0.0);
        assert_eq!(s.factor(150), 0.0);
        // No warm-up: full rate from the first step.
        assert_eq!(LinearSchedule::new(10, 0.0).factor(0), 1.0);
        // int() truncation: 0.02 · 49 = 0.98 → no warm-up.
        assert_eq!(LinearSchedule::new(49, 0.02).warmup_steps, 0);
    }

    #[test]
    fn decay_policy_spares_norms_biases_and_the_logit_scale() {
        let p = DecayPolicy::WeightsOnly;
        for name in [
            "logit_scale",
            "adaptor_module.encoder.0.norm1.weight",
            "adaptor_module.encoder.1.norm2.bias",
            "adaptor_module.encoder.0.attn.in_proj_bias",
            "adaptor_module.encoder.0.linear1.bias",
            "image.layers.0.norm_q.weight",
            "fused_text_norm.weight",
            "image.norm.weight",
        ] {
            assert!(!p.decays(name), "{name}");
        }
        for name in [
            "projection.visual_projection.weight",
            "adaptor_module.encoder.0.attn.in_proj_weight",
            "adaptor_module.encoder.0.attn.out_proj.weight",
            "adaptor_module.encoder.1.linear2.weight",
            "itm_head.weight",
        ] {
            assert!(p.decays(name), "{name}");
        }
        assert!(DecayPolicy::All.decays("logit_scale"));
    }
}
