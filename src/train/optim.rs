//! AdamW (decoupled weight decay) and the learning-rate schedule.
//!
//! Written here rather than taken from `tch::nn::Optimizer` because its state (the moment estimates)
//! cannot be read or written through tch, and `train --resume` needs exactly that to continue a run
//! as if it had never stopped.
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Tensor};

pub struct AdamW {
    /// (name, parameter, first moment, second moment, decayed?) in a fixed (name) order.
    params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates taken so far (bias correction; saved in checkpoints).
    pub step: i64,
}

struct Param {
    name: String,
    var: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

impl AdamW {
    /// Weight decay applies to weight matrices and embeddings, never to biases or LayerNorm gains
    /// (decaying a LayerNorm gain towards 0 fights the normalisation; the usual exclusion).
    pub fn new(vs: &VarStore, weight_decay: f64) -> AdamW {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let decay = var.dim() >= 2;
                Param {
                    m: var.zeros_like(),
                    v: var.zeros_like(),
                    name,
                    var,
                    decay,
                }
            })
            .collect();
        AdamW {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
        }
    }

    /// Backpropagates `loss` and applies one update at learning rate `lr`.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
        loss.backward();
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                if p.decay && self.weight_decay > 0.0 {
                    let _ = p.var.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.m.g_mul_scalar_(self.beta1);
                let _ = p.m.g_add_(&(&g * (1.0 - self.beta1)));
                let _ = p.v.g_mul_scalar_(self.beta2);
                let _ = p.v.g_add_(&(&g * &g * (1.0 - self.beta2)));
                let denom = (&p.v / bc2).sqrt() + self.eps;
                let update = (&p.m / &denom) * (lr / bc1);
                let _ = p.var.g_sub_(&update);
            }
        });
    }

    /// Moment estimates by name (`m.<var>`, `v.<var>`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), p.m.shallow_clone()),
                    (format!("v.{}", p.name), p.v.shallow_clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments written by `state`.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, step: i64) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (key, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                    let name = format!("{key}.{}", p.name);
                    let src = state
                        .get(&name)
                        .with_context(|| format!("checkpoint lacks optimizer state {name}"))?;
                    dst.f_copy_(src)
                        .with_context(|| format!("optimizer state {name} has the wrong shape"))?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Learning rate for update `step` (0-based) of `total`: linear warm-up over `warmup` updates, then
/// constant or a cosine decay to `min_ratio` × the peak at the last update.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Cosine,
}

pub fn learning_rate(
    peak: f64,
    schedule: Schedule,
    step: usize,
    warmup: usize,
    total: usize,
    min_ratio: f64,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => peak,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let t = ((step - warmup) as f64 / span).min(1.0);
            let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
            peak * (min_ratio + (1.0 - min_ratio) * cos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| learning_rate(1.0, Schedule::Cosine, s, 10, 110, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-9);
        assert!((lr(110) - 0.1).abs() < 1e-12);
        assert!(lr(40) > lr(41));
        let c = |s| learning_rate(2.0, Schedule::Constant, s, 0, 5, 0.0);
        assert_eq!(c(0), 2.0);
        assert_eq!(c(100), 2.0);
    }

    /// The update must match PyTorch's AdamW formula, computed here by hand for a scalar.
    #[test]
    fn adamw_matches_the_reference_formula() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1, 1], nn::Init::Const(1.0));
        let b = vs.root().var("b", &[1], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, 0.1);
        let (lr, b1, b2, eps) = (0.01, 0.9, 0.999, 1e-8);
        let (mut wr, mut br) = (1.0f64, 1.0f64);
        let (mut mw, mut vw, mut mb, mut vb) = (0.0, 0.0, 0.0, 0.0);
        for t in 1..=3 {
            // loss = w² + 3b: gradients 2w and 3.
            let loss = (&w * &w).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float);
            opt.backward_step(&loss, lr);
            let (gw, gb) = (2.0 * wr, 3.0);
            wr *= 1.0 - lr * 0.1; // decoupled decay on the matrix only
            mw = b1 * mw + (1.0 - b1) * gw;
            vw = b2 * vw + (1.0 - b2) * gw * gw;
            mb = b1 * mb + (1.0 - b1) * gb;
            vb = b2 * vb + (1.0 - b2) * gb * gb;
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            wr -= lr * (mw / c1) / ((vw / c2).sqrt() + eps);
            br -= lr * (mb / c1) / ((vb / c2).sqrt() + eps);
            assert!((w.double_value(&[0, 0]) - wr).abs() < 1e-6, "step {t}");
            assert!((b.double_value(&[0]) - br).abs() < 1e-6, "step {t}");
        }
    }
}
