//! Training losses over the catalogue: full softmax cross-entropy, or sampled softmax with log-Q
//! correction (the only kind that scales to catalogues of millions of items).
pub use super::fused_ce::ItemGrad;
use crate::model::Encoder;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Softmax over every item.
    Full,
    /// Softmax over the target and `negatives` items sampled per batch (shared by its rows).
    Sampled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    Uniform,
    /// In proportion to how often an item is a training target.
    Popularity,
}

/// The precision of the full loss's catalogue product (M × d by d × n_items, forward and both
/// backward products): the largest matrix products of a training step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogitsPrecision {
    #[default]
    F32,
    /// Operands and the product's result in bfloat16 (the GEMM accumulates in f32), the logits
    /// taken back to f32 before the softmax (mixed precision as on GPUs): 2.4-3.8x faster products
    /// on a CPU with AVX512-BF16 (one thread, 128 rows by 12k items), the softmax and the loss
    /// unchanged.
    Bf16,
}

impl LogitsPrecision {
    fn is_f32(&self) -> bool {
        *self == LogitsPrecision::F32
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub kind: LossKind,
    pub negatives: usize,
    pub sampling: Sampling,
    /// Full loss only: smoothing spreads mass over every class, and the sampled loss masks
    /// accidental hits with -inf.
    pub label_smoothing: f64,
    /// Absent in older manifests (f32), and not written when f32 so that their training
    /// fingerprints are unchanged.
    #[serde(default, skip_serializing_if = "LogitsPrecision::is_f32")]
    pub logits_precision: LogitsPrecision,
    /// Full loss, CPU, no label smoothing: each row's softmax leaves out the other items of its
    /// user's training sequence (as the SASRec+ reference's negatives do), which evaluation masks
    /// anyway; without it a future positive of the same user is pushed down as a negative. Absent
    /// in older manifests (false), and not written when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_history: bool,
}

/// A batch part's loss: its backward pass, and the gradient it leaves for the caller to add.
pub struct Computed {
    pub loss: Tensor,
    /// d loss / d item matrix (rows 1..=n_items of `item_emb`) from the scores, when the loss
    /// computed it by hand instead of through autograd (the fused losses on the CPU).
    pub item_grad: Option<ItemGrad>,
}

impl From<Tensor> for Computed {
    fn from(loss: Tensor) -> Computed {
        Computed {
            loss,
            item_grad: None,
        }
    }
}

/// What the loss needs besides the batch: the sampling distribution of negatives.
pub struct Loss {
    cfg: LossConfig,
    /// Sampling probability of each item column (n_items), on the model's device.
    q: Tensor,
}

impl Loss {
    /// `target_counts[j]`: how often item column j is a training target.
    pub fn new(cfg: LossConfig, target_counts: &[i64], device: tch::Device) -> Loss {
        let counts = Tensor::from_slice(target_counts).to_kind(Kind::Double);
        let q = match cfg.sampling {
            Sampling::Uniform => counts.ones_like(),
            // +1: an item never seen as a target can still be a negative.
            Sampling::Popularity => counts + 1.0,
        };
        let q = (&q / q.sum(Kind::Double)).to_kind(Kind::Float).to(device);
        Loss { cfg, q }
    }

    /// The negatives one batch shares (sampled loss only), drawn from libtorch's generator. Drawn
    /// once per batch, before the batch is split between threads, so a run does not depend on
    /// which thread draws first.
    pub fn draw_negatives(&self) -> Option<Tensor> {
        (self.cfg.kind == LossKind::Sampled)
            .then(|| self.q.multinomial(self.cfg.negatives as i64, true))
    }

    /// Whether [`Loss::compute`] reads each row's history (its user's items, as item columns).
    pub fn needs_history(&self) -> bool {
        self.cfg.exclude_history
    }

    /// Mean loss of rows `z` (M, d) whose targets are item columns `y` (M) and whose users' items
    /// are `history` (one list per row when [`Loss::needs_history`], else empty); the sampled loss
    /// scores `negatives` (from [`Loss::draw_negatives`]; drawn here when None). Its backward pass
    /// reaches every parameter except, with the fused full loss (CPU), the item matrix's share
    /// from the scores: [`Computed::item_grad`], which the trainer adds after the backward pass.
    pub fn compute(
        &self,
        enc: &Encoder,
        z: &Tensor,
        y: &Tensor,
        negatives: Option<&Tensor>,
        history: &[&[i64]],
    ) -> Computed {
        let ls = self.cfg.label_smoothing;
        match self.cfg.kind {
            LossKind::Full => {
                let kind = match self.cfg.logits_precision {
                    LogitsPrecision::F32 => Kind::Float,
                    LogitsPrecision::Bf16 => Kind::BFloat16,
                };
                if z.device() == tch::Device::Cpu {
                    // The same loss, forward and backward fused over the scores (fused_ce.rs).
                    let (e, b) = enc.item_matrix();
                    let b = enc.has_item_bias().then_some(&b);
                    // `history` is empty unless the recipe excludes it (`needs_history`).
                    let (loss, de) = super::fused_ce::cross_entropy(z, &e, b, y, ls, kind, history);
                    return Computed {
                        loss,
                        item_grad: Some(ItemGrad::Dense(de)),
                    };
                }
                // Elsewhere (CUDA) through autograd, the same columns left out.
                let scores = super::fused_ce::without_columns(&enc.logits_in(z, kind), y, history);
                Computed::from(scores.cross_entropy_loss::<Tensor>(
                    y,
                    None,
                    Reduction::Mean,
                    -100,
                    ls,
                ))
            }
            LossKind::Sampled => {
                let n = self.cfg.negatives as i64;
                let neg = match negatives {
                    Some(t) => t.shallow_clone(),
                    None => self.q.multinomial(n, true),
                };
                // log-Q: a negative drawn with probability q stands for 1/(n q) of the catalogue's
                // items in the partition function; without it popular items are over-penalised.
                let log_nq = (self.q.index_select(0, &neg) * n as f64).log();
                if z.device() == tch::Device::Cpu && ls == 0.0 {
                    // The same loss, forward and backward fused over the scores (fused_sampled.rs).
                    let (e, b) = enc.item_matrix();
                    let b = enc.has_item_bias().then_some(&b);
                    let (loss, g) = super::fused_sampled::cross_entropy(z, &e, b, y, &neg, &log_nq);
                    return Computed {
                        loss,
                        item_grad: Some(g),
                    };
                }
                let (e_neg, b_neg) = enc.item_rows(&neg);
                let (e_pos, b_pos) = enc.item_rows(y);
                let pos = (z * e_pos).sum_dim_intlist(-1, true, Kind::Float) + b_pos.unsqueeze(1);
                let mut neg_logits = z.matmul(&e_neg.tr()) + b_neg - log_nq;
                // A sampled negative that is the row's own target is not a negative.
                let hit = y.unsqueeze(1).eq_tensor(&neg.unsqueeze(0));
                neg_logits = neg_logits.masked_fill(&hit, f64::NEG_INFINITY);
                let logits = Tensor::cat(&[pos, neg_logits], 1);
                let target = y.zeros_like();
                Computed::from(logits.cross_entropy_loss::<Tensor>(
                    &target,
                    None,
                    Reduction::Mean,
                    -100,
                    ls,
                ))
            }
        }
    }
}
