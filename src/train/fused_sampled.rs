//! The sampled softmax with log-Q correction (`--loss sampled`), its forward and backward passes
//! fused over the M × K scores on the CPU, as fused_ce.rs does for the full loss.
//!
//! Through autograd the sampled loss gathers the K negatives' rows (and the targets' rows), and
//! its backward pass scatters their gradients into a zero-filled matrix the size of the whole
//! catalogue, once per gather and thread, before adding it to the item matrix's gradient; plus
//! the chain of whole-matrix passes over the scores (bias, log-Q, the accidental-hit mask, the
//! concatenation with the positives, log-softmax and its backward). Profiled on Beauty's default
//! recipe with 2,048 negatives, that backward pass cost more than the loss's forward pass. Here
//! each row is read while it sits in cache, the backward products are taken by hand, and the item
//! matrix's gradient comes back as the rows it touches ([`ItemGrad::Rows`]).
use super::fused_ce::{exp_plus, max_of, ItemGrad};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Mean sampled-softmax loss of rows `z` (M, d) whose targets are item columns `y` (M): each row
/// is scored against its target (`z·e_y + b_y`) and the K shared negatives `neg` (`z·e_j + b_j −
/// log_nq_j`, where `log_nq` (K) is log(K·q_j)); a negative that is the row's own target is left
/// out of that row's softmax (the autograd path masks it with −∞). `e` (N, d) and `b` (N) are the
/// item matrix and its bias (None: no bias). Returns the loss, a scalar whose value is the loss's
/// and whose gradient flows into `z` (and `b`), and the loss's gradient with respect to the item
/// rows it read, for the caller to add. CPU f32 tensors; no label smoothing (the sampled loss
/// refuses it).
pub fn cross_entropy(
    z: &Tensor,
    e: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    neg: &Tensor,
    log_nq: &Tensor,
) -> (Tensor, ItemGrad) {
    let (m, _) = z.size2().expect("z is (M, d)");
    let k = neg.size1().expect("negatives are a vector");
    let zd = z.detach().to_kind(Kind::Float);
    let e = e.detach();
    let (e_neg, e_pos) = (e.index_select(0, neg), e.index_select(0, y));
    let scores = zd.matmul(&e_neg.tr()).contiguous();
    // Column constants (−log_nq, plus the bias) and each row's positive score.
    let mut col = -log_nq.to_kind(Kind::Float);
    let mut pos = (&zd * &e_pos).sum_dim_intlist(-1, false, Kind::Float);
    if let Some(b) = b {
        let b = b.detach();
        col += b.index_select(0, neg);
        pos += b.index_select(0, y);
    }
    let col = Vec::<f32>::try_from(col).expect("a vector");
    let pos = Vec::<f32>::try_from(pos).expect("a vector");
    let targets = Vec::<i64>::try_from(y.to_kind(Kind::Int64)).expect("a vector of item columns");
    let negs = Vec::<i64>::try_from(neg.to_kind(Kind::Int64)).expect("a vector of item columns");
    // Where each item sits among the negatives (repeats allowed), to find a row's accidental hits.
    let mut slots: HashMap<i64, Vec<usize>> = HashMap::new();
    for (j, &c) in negs.iter().enumerate() {
        slots.entry(c).or_default().push(j);
    }
    let hits: Vec<&[usize]> = targets
        .iter()
        .map(|t| slots.get(t).map(Vec::as_slice).unwrap_or_default())
        .collect();
    let mut g_pos = vec![0f32; m as usize];
    let len = (m * k) as usize;
    // SAFETY: `scores` is a contiguous CPU f32 tensor of M × K elements that nothing else
    // references while this runs (it was created above).
    let s = unsafe { std::slice::from_raw_parts_mut(scores.data_ptr() as *mut f32, len) };
    let total = rows(s, &col, &pos, &hits, &mut g_pos);
    let grad = scores;
    let g_pos = Tensor::from_slice(&g_pos).unsqueeze(1);
    let dz = grad.matmul(&e_neg) + &g_pos * &e_pos;
    let rows = Tensor::cat(&[grad.tr().matmul(&zd), &g_pos * &zd], 0);
    let index = Tensor::cat(&[neg, y], 0);
    // sum(z ⊙ dz) has gradient dz with respect to z (and likewise for the bias); its value is
    // replaced by the loss's, so that callers weight and report it as any loss.
    let mut surrogate = (z * dz).sum(Kind::Float);
    if let Some(b) = b {
        let db = Tensor::cat(
            &[
                grad.sum_dim_intlist(0, false, Kind::Float),
                g_pos.squeeze_dim(1),
            ],
            0,
        );
        surrogate += (b.index_select(0, &index) * db).sum(Kind::Float);
    }
    let loss = Tensor::from(total / m as f64).to_kind(Kind::Float);
    (
        &surrogate - surrogate.detach() + loss,
        ItemGrad::Rows { index, rows },
    )
}

crate::simd::multiversion! {
    /// Every row's loss (summed), its scores replaced by their gradient of the mean loss and its
    /// positive's gradient written to `g_pos`, on the widest vector unit the CPU has.
    fn rows(s: &mut [f32], col: &[f32], pos: &[f32], hits: &[&[usize]], g_pos: &mut [f32]) -> f64
        = rows_body;
}

/// Per row: the accidental hits set to −∞ (e^−∞ is 0: out of the softmax, gradient 0); the
/// maximum over the row's scores (plus the column constants) and its positive; exp(x − max) into
/// a scratch row and their sum; then p/M written over the scores and (p_pos − 1)/M for the
/// positive.
#[inline(always)]
fn rows_body(s: &mut [f32], col: &[f32], pos: &[f32], hits: &[&[usize]], g_pos: &mut [f32]) -> f64 {
    let (m, k) = (pos.len(), col.len());
    let mut scratch = vec![0f32; k];
    let scale = 1.0 / m as f32;
    let mut total = 0f64;
    for r in 0..m {
        let x = &mut s[r * k..(r + 1) * k];
        for &j in hits[r] {
            x[j] = f32::NEG_INFINITY;
        }
        let max = max_of(x, col).max(pos[r]);
        let e_pos = (pos[r] - max).exp();
        let sum_e = exp_plus(x, col, max, &mut scratch) + e_pos;
        total += (max + sum_e.ln() - pos[r]) as f64;
        let a = scale / sum_e;
        for (o, &e) in x.iter_mut().zip(&scratch) {
            *o = e * a;
        }
        g_pos[r] = (e_pos / sum_e - 1.0) * scale;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::super::fused_ce::check::assert_close;
    use super::*;
    use tch::{Device, Reduction};

    /// The fused loss and its gradients (z, item rows, bias) against libtorch's autograd of the
    /// same formula as the autograd path in loss.rs, with repeated negatives and accidental hits.
    #[test]
    fn loss_and_gradients_match_autograd() {
        tch::manual_seed(11);
        let opts = (Kind::Float, Device::Cpu);
        for &(m, n, k, d, with_bias) in &[
            (37i64, 101i64, 64i64, 16i64, false),
            (64, 517, 300, 32, true),
            (5, 9, 40, 8, true),
        ] {
            let z0 = Tensor::randn([m, d], opts) * 0.7;
            let e0 = Tensor::randn([n, d], opts) * 0.7;
            let b0 = Tensor::randn([n], opts);
            let y = Tensor::randint(n, [m], (Kind::Int64, Device::Cpu));
            // Drawn with replacement from a small catalogue: repeats and hits are certain.
            let q = (Tensor::rand([n], opts) + 0.1).to_kind(Kind::Float);
            let q = &q / q.sum(Kind::Float);
            let neg = q.multinomial(k, true);
            let log_nq = (q.index_select(0, &neg) * k as f64).log();
            let hits = y.unsqueeze(1).eq_tensor(&neg.unsqueeze(0));
            assert!(
                hits.any().int64_value(&[]) == 1,
                "the case has accidental hits"
            );

            let z = z0.copy().set_requires_grad(true);
            let e = e0.copy().set_requires_grad(true);
            let b = b0.copy().set_requires_grad(true);
            let bias = |cols: &Tensor| {
                if with_bias {
                    b.index_select(0, cols)
                } else {
                    Tensor::zeros(cols.size(), opts)
                }
            };
            let e_neg = e.index_select(0, &neg);
            let e_pos = e.index_select(0, &y);
            let p = (&z * e_pos).sum_dim_intlist(-1, true, Kind::Float) + bias(&y).unsqueeze(1);
            let nl = (z.matmul(&e_neg.tr()) + bias(&neg) - &log_nq)
                .masked_fill(&hits, f64::NEG_INFINITY);
            let want = Tensor::cat(&[p, nl], 1).cross_entropy_loss::<Tensor>(
                &y.zeros_like(),
                None,
                Reduction::Mean,
                -100,
                0.0,
            );
            want.backward();

            let z2 = z0.copy().set_requires_grad(true);
            let e2 = e0.copy().set_requires_grad(true);
            let b2 = b0.copy().set_requires_grad(true);
            let (got, g) = cross_entropy(&z2, &e2, with_bias.then_some(&b2), &y, &neg, &log_nq);
            got.backward();
            assert!(
                !e2.grad().defined(),
                "the item rows' gradient is the caller's"
            );
            let ItemGrad::Rows { index, rows } = g else {
                panic!("the sampled loss returns the rows it read")
            };
            let e2_grad = Tensor::zeros([n, d], opts).index_add(0, &index, &rows);

            let mut pairs = vec![(z.grad(), z2.grad(), "dz"), (e.grad(), e2_grad, "de")];
            if with_bias {
                pairs.push((b.grad(), b2.grad(), "db"));
            } else {
                assert!(!b2.grad().defined());
            }
            assert_close(&want, &got, &pairs, 1e-5);
        }
    }
}
