//! The full softmax cross-entropy over the catalogue, its forward and backward passes fused into
//! one pass over the scores (training's full loss on the CPU, f32 or `--logits-precision bf16`).
//!
//! Through autograd the same loss is a chain of whole-matrix passes over the M × N scores: (in
//! bf16, the product's result cast to f32), the bias added, log-softmax (exp), the NLL's gradient
//! as a zero-filled matrix with one entry set per row, log-softmax's backward (exp again), and (in
//! bf16) that gradient cast back for the product's backward. Profiled on Beauty's default recipe
//! they cost about a fifth of an epoch with bf16 products, and as much as the three f32 products
//! themselves on a CPU without bf16 (one thread, 128 rows by 12k items: 17.8 ms through autograd
//! against 8.1 for the products alone). Here the scores are read while a row sits in cache
//! (maximum, exp and sum, then the gradient written over the row's scores), and the two backward
//! products are taken by hand: autograd only sees a surrogate whose gradient with respect to z
//! (and the item bias) is the product's, and the item matrix's share is returned for the trainer
//! to add to its gradient.
use crate::simd::{bf16_to_f32, f32_to_bf16};
use tch::{Kind, Tensor};

/// `cross_entropy`'s `exclude` for the autograd path (any device): `scores` (M, N) with each row's
/// listed columns set to −∞ unless it is the row's target `y`; unchanged when `exclude` is empty.
/// The fused loss is checked against autograd through this, so the two paths leave out the same
/// columns.
pub fn without_columns(scores: &Tensor, y: &Tensor, exclude: &[&[i64]]) -> Tensor {
    if exclude.is_empty() {
        return scores.shallow_clone();
    }
    let (m, n) = scores.size2().expect("scores are (M, N)");
    assert_eq!(exclude.len(), m as usize, "one exclusion list per row");
    let targets = Vec::<i64>::try_from(y.to_kind(Kind::Int64).to_device(tch::Device::Cpu))
        .expect("targets are a vector of item columns");
    let flat: Vec<i64> = (0..m)
        .flat_map(|r| {
            let t = targets[r as usize];
            exclude[r as usize]
                .iter()
                .filter(move |&&j| j != t)
                .map(move |&j| r * n + j)
        })
        .collect();
    // The listed entries of the flattened scores filled directly (no M × N mask beside them);
    // autograd gives them a zero gradient, as the fused loss does.
    let index = Tensor::from_slice(&flat).to_device(scores.device());
    scores
        .reshape([m * n])
        .index_fill(0, &index, f64::NEG_INFINITY)
        .view([m, n])
}

/// The item matrix's gradient from a fused loss, for the trainer to add.
pub enum ItemGrad {
    /// Every row (n_items, d), in f32 or bf16: the full loss reads every item.
    Dense(Tensor),
    /// Only the rows of item columns `index` (repeats allowed: their rows add up), as `rows`
    /// (len, d, f32): the sampled loss reads its negatives and the targets.
    Rows { index: Tensor, rows: Tensor },
}

/// Mean cross-entropy of rows `z` (M, d) against item rows `e` (N, d) with targets `y` (M, item
/// columns), label smoothing `ls` as libtorch's `cross_entropy`: `(1 − ls)·(lse − x_y) + ls·(lse −
/// mean x)`. Scores are the product of z and e in `kind` (bf16: f32 accumulation, bf16 result, or
/// f32), exactly as the autograd path's; the softmax is computed in f32 from them and its gradient
/// rounded to `kind`, as that path feeds it to the backward products. With a per-item bias `b` (N,
/// f32) the scores are the product plus b, added in f32 as that path does. Returns the loss, a
/// scalar whose value is the loss's and whose gradient flows into `z` (and `b`), and the loss's
/// gradient with respect to `e` (N, d, in `kind`), which the caller adds to the item matrix's
/// gradient itself ([`accumulate`]): through autograd it would take five passes over a matrix of
/// the catalogue's size per step and thread. CPU tensors; `kind` BFloat16 or Float.
///
/// `exclude` (empty: none), one list of item columns per row: columns left out of that row's
/// softmax (score −∞, gradient 0) unless it is the row's target; only without label smoothing.
pub fn cross_entropy(
    z: &Tensor,
    e: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    ls: f64,
    kind: Kind,
    exclude: &[&[i64]],
) -> (Tensor, Tensor) {
    let (m, _) = z.size2().expect("z is (M, d)");
    let (n, _) = e.size2().expect("e is (N, d)");
    assert!(
        exclude.is_empty() || (exclude.len() == m as usize && ls == 0.0),
        "one exclusion list per row, and no label smoothing with them"
    );
    let zk = z.detach().to_kind(kind);
    let ek = e.detach().to_kind(kind);
    // The scores, then (in place, row by row) the loss's gradient with respect to them.
    let scores = zk.matmul(&ek.tr()).contiguous();
    let targets = Vec::<i64>::try_from(y.to_kind(Kind::Int64).to_device(tch::Device::Cpu))
        .expect("targets are a vector of item columns");
    let bias = b.map(|b| {
        Vec::<f32>::try_from(b.detach().to_kind(Kind::Float)).expect("the bias is a vector")
    });
    let mut db = vec![0f32; if bias.is_some() { n as usize } else { 0 }];
    let total = {
        let bias = Bias {
            b: bias.as_deref().unwrap_or_default(),
            db: &mut db,
        };
        let len = (m * n) as usize;
        // SAFETY: `scores` is a contiguous CPU tensor of M × N elements of `kind` (checked by the
        // match) that nothing else references while this block runs (it was created above).
        match scores.kind() {
            Kind::BFloat16 => {
                let s =
                    unsafe { std::slice::from_raw_parts_mut(scores.data_ptr() as *mut u16, len) };
                rows_bf16(s, &targets, n as usize, ls as f32, bias, exclude)
            }
            Kind::Float => {
                let s =
                    unsafe { std::slice::from_raw_parts_mut(scores.data_ptr() as *mut f32, len) };
                rows_f32(s, &targets, n as usize, ls as f32, bias, exclude)
            }
            other => panic!("fused cross-entropy over {other:?} scores"),
        }
    };
    let grad = scores;
    let dz = grad.matmul(&ek).to_kind(Kind::Float);
    let de = grad.tr().matmul(&zk);
    // sum(z ⊙ dz) has gradient dz with respect to z; its value is replaced by the loss's so that
    // callers can weight and report it as any loss.
    let mut surrogate = (z * dz).sum(Kind::Float);
    if let Some(b) = b {
        surrogate += (b * Tensor::from_slice(&db)).sum(Kind::Float);
    }
    let loss = Tensor::from(total / m as f64).to_kind(Kind::Float);
    (&surrogate - surrogate.detach() + loss, de)
}

/// `grad += weight · g` for an f32 gradient and a bf16 or f32 `g` of the same shape, in one pass.
/// Returns false (and does nothing) unless both are contiguous CPU tensors of those kinds.
pub fn accumulate(grad: &Tensor, g: &Tensor, weight: f64) -> bool {
    let ok = grad.device() == tch::Device::Cpu
        && g.device() == tch::Device::Cpu
        && grad.kind() == Kind::Float
        && matches!(g.kind(), Kind::BFloat16 | Kind::Float)
        && grad.is_contiguous()
        && g.is_contiguous()
        && grad.size() == g.size();
    if !ok {
        return false;
    }
    let len = g.numel();
    // SAFETY: checked above: contiguous CPU buffers of `len` f32 and bf16 or f32 elements; the
    // caller holds the only writer's lock on `grad` (training threads take turns).
    let dst = unsafe { std::slice::from_raw_parts_mut(grad.data_ptr() as *mut f32, len) };
    let w = weight as f32;
    if g.kind() == Kind::Float {
        add_scaled(
            dst,
            unsafe { std::slice::from_raw_parts(g.data_ptr() as *const f32, len) },
            w,
        );
    } else {
        add_scaled(
            dst,
            unsafe { std::slice::from_raw_parts(g.data_ptr() as *const u16, len) },
            w,
        );
    }
    true
}

/// `dst += w * src`, whichever way `src`'s scores are stored.
fn add_scaled<T: Score>(dst: &mut [f32], src: &[T], w: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += w * s.get();
    }
}

crate::simd::multiversion! {
    /// Every row's loss (summed, f64), its bf16 scores replaced by their gradient of the mean
    /// loss, on the widest vector unit the CPU has.
    fn rows_bf16(s: &mut [u16], t: &[i64], n: usize, ls: f32, b: Bias, ex: &[&[i64]]) -> f64
        = rows_any::<u16>;
}

crate::simd::multiversion! {
    /// [`rows_bf16`] over f32 scores.
    fn rows_f32(s: &mut [f32], t: &[i64], n: usize, ls: f32, b: Bias, ex: &[&[i64]]) -> f64
        = rows_any::<f32>;
}

/// How a score is stored: bf16 (as its bits) or f32. Arithmetic is f32 either way.
trait Score: Copy {
    fn get(self) -> f32;
    fn put(v: f32) -> Self;
}

impl Score for u16 {
    #[inline(always)]
    fn get(self) -> f32 {
        bf16_to_f32(self)
    }
    #[inline(always)]
    fn put(v: f32) -> u16 {
        f32_to_bf16(v)
    }
}

impl Score for f32 {
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    #[inline(always)]
    fn put(v: f32) -> f32 {
        v
    }
}

/// A per-item bias added to the scores (empty: none) and its gradient, summed over the rows.
struct Bias<'a> {
    b: &'a [f32],
    db: &'a mut [f32],
}

#[inline(always)]
fn rows_any<T: Score>(s: &mut [T], t: &[i64], n: usize, ls: f32, b: Bias, ex: &[&[i64]]) -> f64 {
    if b.b.is_empty() {
        rows_body::<T, false>(s, t, n, ls, b, ex)
    } else {
        rows_body::<T, true>(s, t, n, ls, b, ex)
    }
}

/// Per row, three passes while it sits in cache (after its excluded columns are set to −∞, whose
/// exp is 0): maximum and sum of the scores; exp(x − max) into
/// a scratch row, and their sum; the gradient (p − (1 − ls)·onehot − ls/N) / M written over the
/// row's scores (and, with a bias, summed into its gradient in f32).
#[inline(always)]
fn rows_body<T: Score, const BIAS: bool>(
    s: &mut [T],
    targets: &[i64],
    n: usize,
    ls: f32,
    bias: Bias,
    exclude: &[&[i64]],
) -> f64 {
    let m = targets.len();
    let mut scratch = vec![0f32; n];
    let scale = 1.0 / m as f32;
    let mut total = 0f64;
    let (b, db) = (&bias.b[..if BIAS { n } else { 0 }], bias.db);
    for (r, &y) in targets.iter().enumerate() {
        let y = y as usize;
        assert!(y < n, "target column {y} out of {n} items");
        let x = &mut s[r * n..(r + 1) * n];
        for &j in exclude.get(r).copied().unwrap_or_default() {
            if j as usize != y {
                x[j as usize] = T::put(f32::NEG_INFINITY);
            }
        }
        let (max, sum_x) = max_and_sum::<T, BIAS>(x, b);
        let sum_e = exp_shifted::<T, BIAS>(x, b, max, &mut scratch);
        let lse = max + sum_e.ln();
        let x_y = x[y].get() + if BIAS { b[y] } else { 0.0 };
        // Without smoothing the sum is not used (it is −∞ when columns are excluded).
        let loss = if ls == 0.0 {
            lse - x_y
        } else {
            (1.0 - ls) * (lse - x_y) + ls * (lse - sum_x / n as f32)
        };
        total += loss as f64;
        let (a, c) = (scale / sum_e, ls * scale / n as f32);
        if BIAS {
            for ((o, &e), d) in x.iter_mut().zip(&scratch).zip(db.iter_mut()) {
                let v = e * a - c;
                *o = T::put(v);
                *d += v;
            }
        } else {
            for (o, &e) in x.iter_mut().zip(&scratch) {
                *o = T::put(e * a - c);
            }
        }
        // The target's entry: p_y − (1 − ls) − ls/N, from the same p_y as the others.
        x[y] = T::put((scratch[y] / sum_e - (1.0 - ls) - ls / n as f32) * scale);
        if BIAS {
            db[y] -= (1.0 - ls) * scale;
        }
    }
    total
}

/// The maximum of a row of f32 scores plus per-column constants `c` (fused_sampled.rs).
#[inline(always)]
pub(super) fn max_of(x: &[f32], c: &[f32]) -> f32 {
    max_and_sum::<f32, true>(x, c).0
}

/// exp(x + c − max) of each of a row's f32 scores into `out`, and their sum (fused_sampled.rs).
#[inline(always)]
pub(super) fn exp_plus(x: &[f32], c: &[f32], max: f32, out: &mut [f32]) -> f32 {
    exp_shifted::<f32, true>(x, c, max, out)
}

const LANES: usize = 16;

/// Scores `i·LANES..(i+1)·LANES` of a row (`c` their products): plus the items' biases when
/// there are any. Fixed-size lanes, so that the loops over them vectorise.
#[inline(always)]
fn lane<T: Score, const BIAS: bool>(c: &[T], b: &[f32], i: usize) -> [f32; LANES] {
    let c: &[T; LANES] = c.try_into().expect("a full lane");
    let mut v = [0f32; LANES];
    for k in 0..LANES {
        v[k] = c[k].get();
    }
    if BIAS {
        let b: &[f32; LANES] = b[i * LANES..(i + 1) * LANES]
            .try_into()
            .expect("a full lane");
        for k in 0..LANES {
            v[k] += b[k];
        }
    }
    v
}

/// Score j of a row, one at a time (the lanes' remainder).
#[inline(always)]
fn score<T: Score, const BIAS: bool>(x: T, b: &[f32], j: usize) -> f32 {
    x.get() + if BIAS { b[j] } else { 0.0 }
}

/// The row's maximum and sum, in lanes so that the compiler can vectorise them (one accumulator
/// would be a float reduction it may not reorder).
#[inline(always)]
fn max_and_sum<T: Score, const BIAS: bool>(x: &[T], b: &[f32]) -> (f32, f32) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut sm = [0f32; LANES];
    let full = x.len() - x.len() % LANES;
    for (i, c) in x[..full].chunks_exact(LANES).enumerate() {
        let v = lane::<T, BIAS>(c, b, i);
        for k in 0..LANES {
            mx[k] = if v[k] > mx[k] { v[k] } else { mx[k] };
            sm[k] += v[k];
        }
    }
    let mut max = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum: f32 = sm.iter().sum();
    for (j, &xj) in x.iter().enumerate().skip(full) {
        let v = score::<T, BIAS>(xj, b, j);
        max = max.max(v);
        sum += v;
    }
    (max, sum)
}

/// exp(x − max) of each score into `out`, and their sum (in lanes, as above).
#[inline(always)]
fn exp_shifted<T: Score, const BIAS: bool>(x: &[T], b: &[f32], max: f32, out: &mut [f32]) -> f32 {
    let mut sm = [0f32; LANES];
    let full = x.len() - x.len() % LANES;
    let lanes = x[..full]
        .chunks_exact(LANES)
        .zip(out[..full].chunks_exact_mut(LANES));
    for (i, (c, o)) in lanes.enumerate() {
        let v = lane::<T, BIAS>(c, b, i);
        for k in 0..LANES {
            let e = exp(v[k] - max);
            o[k] = e;
            sm[k] += e;
        }
    }
    let mut sum: f32 = sm.iter().sum();
    for j in full..x.len() {
        out[j] = exp(score::<T, BIAS>(x[j], b, j) - max);
        sum += out[j];
    }
    sum
}

/// e^x for x ≤ 0 (a shifted score), branch-free so that it vectorises: x = k·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by a degree-6 polynomial (relative error below 2e-7, as libtorch's Sleef
/// exp within f32 rounding), 2^k put into the exponent bits. Below −87 it returns 0 (e^−87 is
/// 1.6e-38, under f32's normal range; such a score's share of the softmax is nil).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let xc = if x < -87.0 { -87.0 } else { x };
    let t = xc * LOG2E + SHIFTER;
    let k = t - SHIFTER;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let scaled = f32::from_bits(((bits + 127) << 23) as u32) * p;
    if x < -87.0 {
        0.0
    } else {
        scaled
    }
}

/// What the fused losses' tests share: the autograd reference's scores, and the comparison.
#[cfg(test)]
pub(super) mod check {
    use tch::{Kind, Tensor};

    /// Scores as the autograd path computes them: the product in `kind`, back to f32, plus the
    /// bias when there is one.
    pub fn reference_scores(z: &Tensor, e: &Tensor, b: Option<&Tensor>, kind: Kind) -> Tensor {
        let scores = z
            .to_kind(kind)
            .matmul(&e.to_kind(kind).tr())
            .to_kind(Kind::Float);
        match b {
            Some(b) => scores + b,
            None => scores,
        }
    }

    /// The fused loss against the reference's to 1e-5 (relative), and each (reference, fused,
    /// name) gradient pair to `tol` of the reference's largest entry.
    pub fn assert_close(want: &Tensor, got: &Tensor, pairs: &[(Tensor, Tensor, &str)], tol: f64) {
        let (w, g) = (want.double_value(&[]), got.double_value(&[]));
        assert!((w - g).abs() < 1e-5 * w.abs().max(1.0), "loss {g} vs {w}");
        for (a, b, what) in pairs {
            let scale = a.abs().max().double_value(&[]);
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(
                diff <= tol * scale,
                "{what}: max |diff| {diff} of max |grad| {scale}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check::{assert_close, reference_scores};
    use super::*;

    #[test]
    fn exp_matches_the_library_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// The autograd path's exclusion, element by element: listed columns −∞, the target and the
    /// unlisted columns as they were, repeats and an empty list harmless.
    #[test]
    fn without_columns_masks_the_listed_columns_but_the_target() {
        let scores = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([3, 4]);
        let y = Tensor::from_slice(&[1i64, 2, 0]);
        let lists: [&[i64]; 3] = [&[1, 3, 3], &[], &[0, 1, 2]];
        let got = Vec::<f32>::try_from(without_columns(&scores, &y, &lists).view([-1])).unwrap();
        let inf = f32::NEG_INFINITY;
        let want = [0., 1., 2., inf, 4., 5., 6., 7., 8., inf, inf, 11.];
        assert_eq!(got, want);
        assert!(without_columns(&scores, &y, &[]).equal(&scores));
    }

    /// Columns excluded per row (the row's own history): the same as autograd with those scores
    /// set to −∞, the target kept even when its row's list names it.
    #[test]
    fn excluded_columns_leave_the_softmax() {
        tch::manual_seed(5);
        let (m, n, d) = (23i64, 301i64, 16i64);
        let opts = (Kind::Float, tch::Device::Cpu);
        let z0 = Tensor::randn([m, d], opts);
        let e0 = Tensor::randn([n, d], opts);
        let b0 = Tensor::randn([n], opts);
        let y = Tensor::randint(n, [m], (Kind::Int64, tch::Device::Cpu));
        let ys = Vec::<i64>::try_from(&y).unwrap();
        // Row r excludes columns r, r+7, ... and its own target (which must stay).
        let lists: Vec<Vec<i64>> = (0..m)
            .map(|r| {
                let mut l: Vec<i64> = (r..n).step_by(7).collect();
                l.push(ys[r as usize]);
                l
            })
            .collect();
        let refs: Vec<&[i64]> = lists.iter().map(Vec::as_slice).collect();
        for kind in [Kind::Float, Kind::BFloat16] {
            for with_bias in [false, true] {
                let z = z0.copy().set_requires_grad(true);
                let e = e0.copy().set_requires_grad(true);
                let b = b0.copy().set_requires_grad(true);
                let scores = reference_scores(&z, &e, with_bias.then_some(&b), kind);
                let want = without_columns(&scores, &y, &refs).cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    0.0,
                );
                want.backward();
                let z2 = z0.copy().set_requires_grad(true);
                let e2 = e0.copy().set_requires_grad(true);
                let b2 = b0.copy().set_requires_grad(true);
                let bias = with_bias.then_some(&b2);
                let (got, de) = cross_entropy(&z2, &e2, bias, &y, 0.0, kind, &refs);
                got.backward();
                let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
                let de = de.to_kind(Kind::Float);
                let pairs = [(z.grad(), z2.grad(), "dz"), (e.grad(), de, "de")];
                assert_close(&want, &got, &pairs, tol);
            }
        }
    }

    /// The fused loss and its gradients against libtorch's autograd of the same product (bf16 or
    /// f32, plus a bias when there is one): the loss to float rounding; the gradients to bf16's in
    /// bf16 (the gradient is rounded to bf16 before the backward products in both, and an exp that
    /// differs in the last bit can round one of its entries the other way), to f32 rounding in f32.
    #[test]
    fn loss_and_gradients_match_autograd() {
        tch::manual_seed(7);
        let cases = [
            (37i64, 1001i64, 16i64, 0.0f64, false),
            (64, 517, 32, 0.1, false),
            (5, 17, 8, 0.0, false),
            (37, 1001, 16, 0.0, true),
            (64, 517, 32, 0.1, true),
        ];
        for kind in [Kind::BFloat16, Kind::Float] {
            let (max_tol, rel_tol) = match kind {
                Kind::Float => (1e-5, 1e-5),
                _ => (1e-2, 2e-3),
            };
            for &(m, n, d, ls, with_bias) in &cases {
                let opts = (Kind::Float, tch::Device::Cpu);
                let z0 = Tensor::randn([m, d], opts) * 0.7;
                let e0 = Tensor::randn([n, d], opts) * 0.7;
                let b0 = Tensor::randn([n], opts);
                let y = Tensor::randint(n, [m], (Kind::Int64, tch::Device::Cpu));

                let z = z0.copy().set_requires_grad(true);
                let e = e0.copy().set_requires_grad(true);
                let b = b0.copy().set_requires_grad(true);
                let want = reference_scores(&z, &e, with_bias.then_some(&b), kind)
                    .cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, ls);
                want.backward();

                let z2 = z0.copy().set_requires_grad(true);
                let e2 = e0.copy().set_requires_grad(true);
                let b2 = b0.copy().set_requires_grad(true);
                let (got, de) =
                    cross_entropy(&z2, &e2, with_bias.then_some(&b2), &y, ls, kind, &[]);
                assert_eq!(de.kind(), kind);
                got.backward();
                assert!(
                    !e2.grad().defined(),
                    "the item rows' gradient is the caller's to add"
                );
                let e2_grad = Tensor::zeros([n, d], opts);
                assert!(accumulate(&e2_grad, &de, 2.0) && accumulate(&e2_grad, &de, -1.0));

                let mut pairs = vec![(z.grad(), z2.grad(), "dz"), (e.grad(), e2_grad, "de")];
                if with_bias {
                    pairs.push((b.grad(), b2.grad(), "db"));
                } else {
                    assert!(!b2.grad().defined());
                }
                assert_close(&want, &got, &pairs, max_tol);
                for (a, b, what) in pairs {
                    let rel = (&a - &b).norm().double_value(&[]) / a.norm().double_value(&[]);
                    assert!(rel < rel_tol, "{kind:?} {what}: relative difference {rel}");
                }
            }
        }
    }
}
