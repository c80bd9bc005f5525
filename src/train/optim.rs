//! AdamW (decoupled weight decay) and the learning-rate schedule.
//!
//! Written here rather than taken from `tch::nn::Optimizer` because its state (the moment estimates)
//! cannot be read or written through tch, and `train --resume` needs exactly that to continue a run
//! as if it had never stopped.
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Tensor};

pub struct AdamW {
    /// Every parameter in a fixed (name) order, each a view into `flat`.
    params: Vec<Param>,
    /// All parameters in one contiguous buffer, and their moments likewise: one update is a
    /// handful of operations over the whole model instead of a dozen per parameter (at d 64 the
    /// per-operation cost of ~35 small tensors was most of the optimizer's time).
    flat: Tensor,
    m: Tensor,
    v: Tensor,
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
    offset: i64,
    numel: i64,
    decay: bool,
}

impl AdamW {
    /// Weight decay applies to weight matrices and embeddings, never to biases or LayerNorm gains
    /// (decaying a LayerNorm gain towards 0 fights the normalisation; the usual exclusion).
    ///
    /// The variables are moved into one flat buffer (each variable becomes a view of its slice),
    /// so the store, its saving and loading work on them as before.
    pub fn new(vs: &VarStore, weight_decay: f64) -> AdamW {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let total: i64 = vars.values().map(Tensor::numel).map(|n| n as i64).sum();
        let (kind, device) = vars
            .values()
            .next()
            .map(|t| (t.kind(), t.device()))
            .unwrap_or((tch::Kind::Float, vs.device()));
        let flat = Tensor::zeros([total], (kind, device));
        let mut offset = 0;
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let numel = var.numel() as i64;
                let slot = flat.narrow(0, offset, numel).view(var.size().as_slice());
                tch::no_grad(|| {
                    let mut slot = slot.shallow_clone();
                    slot.copy_(&var);
                    let mut v = var.shallow_clone();
                    v.set_data(&slot);
                });
                let p = Param {
                    decay: var.dim() >= 2,
                    name,
                    var,
                    offset,
                    numel,
                };
                offset += numel;
                p
            })
            .collect();
        AdamW {
            params,
            m: flat.zeros_like(),
            v: flat.zeros_like(),
            flat,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
        }
    }

    /// Backpropagates `loss` and applies one update at learning rate `lr`.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) {
        self.zero_grad();
        loss.backward();
        self.update(lr);
    }

    /// Clears the gradients before a batch's backward passes (which may be several, one per
    /// thread, accumulating into the same gradients).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
    }

    /// One update at learning rate `lr` from the accumulated gradients.
    pub fn update(&mut self, lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        if self.flat.device() == tch::Device::Cpu && self.flat.kind() == tch::Kind::Float {
            self.update_cpu(lr, bc1, bc2);
            return;
        }
        tch::no_grad(|| {
            // A parameter the loss did not reach (undefined gradient) gets a zero gradient: its
            // moments decay as an unused row's would.
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| {
                    let g = p.var.grad();
                    if g.defined() {
                        g.view(-1)
                    } else {
                        Tensor::zeros([p.numel], (self.flat.kind(), self.flat.device()))
                    }
                })
                .collect();
            let g = Tensor::cat(&grads, 0);
            if self.weight_decay > 0.0 {
                for p in self.params.iter().filter(|p| p.decay) {
                    let _ = self
                        .flat
                        .narrow(0, p.offset, p.numel)
                        .g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
            }
            let _ = self.m.lerp_(&g, 1.0 - self.beta1);
            let _ = self.v.lerp_(&g.square(), 1.0 - self.beta2);
            let denom = self.v.sqrt() * (1.0 / bc2.sqrt()) + self.eps;
            let _ = self.flat.addcdiv_(&(&self.m * (-lr / bc1)), &denom);
        });
    }

    /// The same update as one pass over the parameters, moments and gradients on the CPU (the
    /// tensor form above makes nine passes and as many temporaries; this is most of a training
    /// step's serial part).
    fn update_cpu(&mut self, lr: f64, bc1: f64, bc2: f64) {
        let (b1, b2, eps) = (self.beta1 as f32, self.beta2 as f32, self.eps as f32);
        let step = (lr / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let total = self.flat.numel();
        // SAFETY: flat, m and v are distinct contiguous float32 CPU buffers of `total` elements,
        // owned by this optimizer; nothing else runs on them during an update (the training
        // threads of the step have finished their backward passes).
        let (w, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.flat.data_ptr() as *mut f32, total),
                std::slice::from_raw_parts_mut(self.m.data_ptr() as *mut f32, total),
                std::slice::from_raw_parts_mut(self.v.data_ptr() as *mut f32, total),
            )
        };
        let c = Consts {
            b1,
            b2,
            eps,
            step,
            inv_sqrt_bc2,
            decay: 1.0,
        };
        for p in &self.params {
            let range = p.offset as usize..(p.offset + p.numel) as usize;
            let (w, m, v) = (&mut w[range.clone()], &mut m[range.clone()], &mut v[range]);
            let decay = if p.decay && self.weight_decay > 0.0 {
                (1.0 - lr * self.weight_decay) as f32
            } else {
                1.0
            };
            let c = Consts { decay, ..c };
            let g = p.var.grad();
            let g = if g.defined() {
                g.contiguous()
            } else {
                Tensor::zeros([p.numel], (tch::Kind::Float, tch::Device::Cpu))
            };
            // SAFETY: a contiguous float32 CPU tensor of the parameter's numel elements, alive
            // for this scope.
            let g = unsafe { std::slice::from_raw_parts(g.data_ptr() as *const f32, w.len()) };
            // The item matrix is most of the parameters: its halves are updated on two threads
            // (the update is the serial part of a step, the other core idle otherwise).
            if w.len() >= PARALLEL_FROM {
                let half = w.len() / 2;
                let (w0, w1) = w.split_at_mut(half);
                let (m0, m1) = m.split_at_mut(half);
                let (v0, v1) = v.split_at_mut(half);
                let (g0, g1) = g.split_at(half);
                std::thread::scope(|s| {
                    s.spawn(|| adamw(w1, m1, v1, g1, c));
                    adamw(w0, m0, v0, g0, c);
                });
            } else {
                adamw(w, m, v, g, c);
            }
        }
    }

    /// Moment estimates by name (`m.<var>`, `v.<var>`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                let shape = p.var.size();
                [
                    (
                        format!("m.{}", p.name),
                        self.m.narrow(0, p.offset, p.numel).view(shape.as_slice()),
                    ),
                    (
                        format!("v.{}", p.name),
                        self.v.narrow(0, p.offset, p.numel).view(shape.as_slice()),
                    ),
                ]
            })
            .collect()
    }

    /// Restores the moments written by `state`.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, step: i64) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &self.params {
                let shape = p.var.size();
                for (key, flat) in [("m", &self.m), ("v", &self.v)] {
                    let mut dst = flat.narrow(0, p.offset, p.numel).view(shape.as_slice());
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

/// Parameters of at least this many elements are updated by two threads.
const PARALLEL_FROM: usize = 1 << 18;

/// One AdamW step's constants (for one parameter: `decay` is its weight decay factor).
#[derive(Clone, Copy)]
struct Consts {
    b1: f32,
    b2: f32,
    eps: f32,
    step: f32,
    inv_sqrt_bc2: f32,
    decay: f32,
}

crate::simd::multiversion! {
    /// The AdamW step of a slice of parameters, on the widest vector unit the CPU has (each
    /// element's arithmetic is the same whatever unit runs it: no reduction, no reordering).
    fn adamw(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Consts) = adamw_body;
}

#[inline(always)]
fn adamw_body(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Consts) {
    let n = w.len();
    let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        let gi = g[i];
        let mi = c.b1 * m[i] + (1.0 - c.b1) * gi;
        let vi = c.b2 * v[i] + (1.0 - c.b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * c.decay - c.step * mi / (vi.sqrt() * c.inv_sqrt_bc2 + c.eps);
    }
}
