//! The exact scan's fast first pass: scores computed in bfloat16, with a proven error bound, then
//! the few items that could still be in the top k re-scored in f32. The answer is the f32 scan's.
//!
//! Why: at 1M items the scan reads the whole item matrix for every batch. In bf16 it is half the
//! bytes, and CPUs with AVX-512 BF16 (or AMX) multiply bf16 at twice the f32 rate; measured here
//! (2 threads, batch 32, 1M × 64): 1,438 against 523 batches-of-one/s in f32.
//!
//! Why it is still exact: every approximate score a_j = bf16 scan of z·e_j + b_j is within
//! δ_j = C·(‖z‖·‖e_j‖ + |b_j|) of the f32 score s_j (bf16 rounding of z, e_j, b_j and of the result,
//! f32 accumulation; [`Items::bound_factor`]). Let L be the k-th largest of a_i − δ_i over the
//! eligible items: k items have s_i ≥ L, so the true k-th score T ≥ L. An item j of the true top k
//! has a_j + δ_j ≥ s_j ≥ T ≥ L. So every item with a_j + δ_j < L can be dropped unseen, and the rest
//! (a few dozen to a few thousand of 1M) are scored in f32 and ranked with `rank::TopK`: ties at the
//! k-th score are all kept (s_j = T passes), so the tie policy is the f32 scan's too.
//!
//! The bound assumes the bf16 GEMM accumulates in f32 (oneDNN and libtorch's fallback do). That
//! assumption is checked when the copy is made ([`Items::new`]): a kernel that breaks the bound on
//! a sample refuses the bf16 path, and the f32 scan answers.
use super::super::rank::TopK;
use super::parallel::{f32_slice, scan_ranges, RangePart};
use crate::simd::bf16_to_f32;
use tch::{Device, Kind, Tensor};

/// bf16 keeps 8 significant bits: round-to-nearest is off by at most 2⁻⁹ of a value; 2⁻⁸ leaves
/// a factor of 2 for any kernel that rounds differently.
const U: f64 = 1.0 / 256.0;

/// The item matrix in bf16, with the per-item norms the error bound needs.
pub struct Items {
    emb: Tensor,
    bias: Tensor,
    /// ‖e_j‖₂ (rounded up) and |b_j|, per item.
    norms: Vec<f32>,
    abs_bias: Vec<f32>,
    max_norm: f32,
    max_abs_bias: f32,
    dim: usize,
}

impl Items {
    /// A bf16 copy of `emb` (N, d) and `bias` (N) on the CPU, checked against the f32 scores on
    /// a sample: an error past the bound (a kernel that does not accumulate in f32) refuses it.
    pub fn new(emb: &Tensor, bias: &Tensor) -> Result<Items, String> {
        let emb32 = emb.to_kind(Kind::Float).contiguous();
        let bias32 = bias.to_kind(Kind::Float).contiguous();
        let dim = emb32.size()[1] as usize;
        let e = f32_slice(&emb32);
        let b = f32_slice(&bias32);
        let norms: Vec<f32> = e.chunks_exact(dim.max(1)).map(|r| norm(r) as f32).collect();
        let abs_bias: Vec<f32> = b.iter().map(|x| x.abs()).collect();
        if norms.iter().chain(&abs_bias).any(|x| !x.is_finite()) {
            return Err("the item matrix holds a non-finite value".into());
        }
        let items = Items {
            emb: emb32.to_kind(Kind::BFloat16).contiguous(),
            bias: bias32.to_kind(Kind::BFloat16).contiguous(),
            max_norm: norms.iter().copied().fold(0.0, f32::max),
            max_abs_bias: abs_bias.iter().copied().fold(0.0, f32::max),
            norms,
            abs_bias,
            dim,
        };
        items.check_bound(&emb32, &bias32)?;
        Ok(items)
    }

    /// Bytes held by the copy (reported at load).
    pub fn bytes(&self) -> usize {
        self.norms.len() * (2 * self.dim + 2 + 8)
    }

    /// C in δ_j = C·(‖z‖·‖e_j‖ + |b_j|): rounding z, e_j (2U), the bias and the result (U each, on
    /// a total bounded by the same sum), and f32 accumulation of d + 1 terms, doubled.
    fn bound_factor(&self) -> f64 {
        3.0 * U + 4.0 * U * U + 2.0 * (self.dim as f64 + 2.0) * f64::powi(2.0, -24)
    }

    /// Scores the first items against rows of the item matrix itself (queries shaped like
    /// real ones) in bf16 and in f32, and refuses the copy if any error exceeds its bound.
    fn check_bound(&self, emb32: &Tensor, bias32: &Tensor) -> Result<(), String> {
        let n = self.norms.len() as i64;
        if n == 0 {
            return Ok(());
        }
        let m = n.min(8192);
        let step = (n / 16).max(1);
        let q_idx: Vec<i64> = (0..16).map(|i| (i * step) % n).collect();
        let z = emb32.index_select(0, &Tensor::from_slice(&q_idx)) * 3.0;
        let exact = bias32
            .narrow(0, 0, m)
            .addmm(&z, &emb32.narrow(0, 0, m).tr())
            .contiguous();
        let approx = self
            .bias
            .narrow(0, 0, m)
            .addmm(&z.to_kind(Kind::BFloat16), &self.emb.narrow(0, 0, m).tr())
            .to_kind(Kind::Float)
            .contiguous();
        let (ex, ap) = (f32_slice(&exact), f32_slice(&approx));
        let zf = z.contiguous();
        let zs = f32_slice(&zf);
        let c = self.bound_factor();
        for (r, zr) in zs.chunks_exact(self.dim).enumerate() {
            let zn = norm(zr);
            for j in 0..m as usize {
                let i = r * m as usize + j;
                // Three quarters: the f32 arithmetic of the scan itself needs some of the slack.
                let bound = 0.75 * c * (zn * self.norms[j] as f64 + self.abs_bias[j] as f64);
                if ((ap[i] as f64) - (ex[i] as f64)).abs() > bound {
                    return Err(format!(
                        "the bf16 kernel's error {} exceeds its bound {bound} (it does not \
                         accumulate in f32)",
                        (ap[i] - ex[i]).abs()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One row's state while scanning: the k-th best lower bound so far and the items that may beat it.
struct Row<'a> {
    /// δ_j = c·‖z‖·‖e_j‖ + c·|b_j|: the two factors, per row.
    c_norm: f32,
    c: f32,
    /// The largest δ of any item: the lane test's margin.
    delta_max: f32,
    /// k best of a_j − δ_j (its k-th is L).
    lower: TopK,
    /// (item index, a_j + δ_j) of the items not yet ruled out.
    cands: Vec<(usize, f32)>,
    /// Compact `cands` when it grows past this (doubled when compacting does not halve it).
    cap: usize,
    excl: &'a [usize],
}

impl Row<'_> {
    fn limit(&self) -> f32 {
        self.lower.threshold().map_or(f32::NEG_INFINITY, |(_, s)| s)
    }

    /// Drops candidates already ruled out, once the list has grown (bounds its memory).
    fn maybe_compact(&mut self) {
        if self.cands.len() > self.cap {
            let l = self.limit();
            self.cands.retain(|&(_, up)| up >= l);
            if self.cands.len() > self.cap / 2 {
                self.cap *= 2;
            }
        }
    }
}

/// Ranks the rows `rows` of `z` exactly, the first pass in bf16 over `threads` ranges of the
/// items. `emb`/`bias` are the f32 matrix the answer is scored with. None when the bf16 pass cannot
/// be used for this batch (a non-finite or huge query vector): the caller scans in f32.
#[allow(clippy::too_many_arguments)]
pub fn retrieve(
    items: &Items,
    threads: usize,
    block_elems: usize,
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    ks: &[usize],
    excl: &[Vec<usize>],
) -> Option<Vec<Vec<(usize, f32)>>> {
    let b = ks.len();
    let d = items.dim;
    let zf = z.to_kind(Kind::Float).contiguous();
    let zs = f32_slice(&zf);
    let c = items.bound_factor();
    let mut consts = Vec::with_capacity(b);
    for zr in zs.chunks_exact(d) {
        let zn = norm(zr);
        // bf16 shares f32's exponent range; far below its top there is no overflow to fear.
        if !zn.is_finite() || zn > 1e30 {
            return None;
        }
        let c_norm = (c * zn) as f32;
        let delta_max = (c * (zn * items.max_norm as f64 + items.max_abs_bias as f64)) as f32;
        consts.push((c_norm, c as f32, delta_max));
    }
    let zb = zf.to_kind(Kind::BFloat16).contiguous();
    let (norms, abs_bias) = (&items.norms[..], &items.abs_bias[..]);
    let new_rows = || -> Vec<Row> {
        (0..b)
            .map(|i| Row {
                c_norm: consts[i].0,
                c: consts[i].1,
                delta_max: consts[i].2,
                lower: TopK::new(ks[i]),
                cands: Vec::new(),
                cap: 4096,
                excl: &excl[i],
            })
            .collect()
    };
    let scan = |p: RangePart| -> Vec<Row> {
        let mut rows = new_rows();
        scan_range(&p, block_elems, norms, abs_bias, &mut rows);
        rows
    };
    let parts = scan_ranges(&zb, &items.emb, &items.bias, threads, scan);
    // Merge: L over all items, then the surviving candidates scored in f32.
    let emb32 = emb.to_kind(Kind::Float).contiguous();
    let bias32 = bias.to_kind(Kind::Float).contiguous();
    let (e, bb) = (f32_slice(&emb32), f32_slice(&bias32));
    // Row i of every range, in turn (the ranges' lists are consumed, not copied).
    let mut parts: Vec<_> = parts.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let rows: Vec<Row> = parts
            .iter_mut()
            .map(|p| p.next().expect("a row per query"))
            .collect();
        let mut lower = TopK::new(ks[i]);
        let mut cands = Vec::new();
        for row in rows {
            lower.absorb(row.lower);
            cands.extend(row.cands);
        }
        let l = lower.threshold().map_or(f32::NEG_INFINITY, |(_, s)| s);
        let zr = &zs[i * d..(i + 1) * d];
        let mut top = TopK::new(ks[i]);
        // The ranges are disjoint and a range offers an item once: no candidate repeats.
        for (j, up) in cands {
            if up >= l {
                let row = &e[(j - 1) * d..j * d];
                let s = zr.iter().zip(row).fold(0f32, |a, (x, y)| x.mul_add(*y, a)) + bb[j - 1];
                top.offer(j, s);
            }
        }
        out.push(top.into_vec());
    }
    Some(out)
}

/// Scans one range in blocks: one bf16 GEMM per block into a reused buffer, each row's block read
/// while hot.
fn scan_range(
    p: &RangePart,
    block_elems: usize,
    norms: &[f32],
    abs_bias: &[f32],
    rows: &mut [Row],
) {
    let b = rows.len();
    let n = p.emb.size()[0] as usize;
    let block = (block_elems / b.max(1)).clamp(1, n.max(1));
    let buf = Tensor::empty([(b * block) as i64], (Kind::BFloat16, Device::Cpu));
    let mut at = 0;
    while at < n {
        let len = block.min(n - at);
        let out = buf
            .narrow(0, 0, (b * len) as i64)
            .view([b as i64, len as i64]);
        let _ = p.bias.narrow(0, at as i64, len as i64).addmm_out(
            &out,
            &p.z,
            &p.emb.narrow(0, at as i64, len as i64).tr(),
        );
        // SAFETY: `out` is a contiguous CPU bf16 tensor of b × len elements that lives (through
        // `buf`) until the end of this iteration; nothing writes to it while the slice is read.
        let scores = unsafe { std::slice::from_raw_parts(out.data_ptr() as *const u16, b * len) };
        for (row, s) in rows.iter_mut().zip(scores.chunks_exact(len)) {
            scan_block(norms, abs_bias, row, s, p.offset + at);
        }
        at += len;
    }
}

/// Whether an upper bound reaches the limit; a NaN never does (a NaN score is never a candidate,
/// as in `TopK`).
#[inline(always)]
fn reaches(upper: f32, limit: f32) -> bool {
    upper >= limit
}

crate::simd::multiversion! {
    /// One block of one row (column j = item index at + j + 1), on the widest vector unit the CPU
    /// has.
    fn scan_block(norms: &[f32], abs_bias: &[f32], row: &mut Row, s: &[u16], at: usize) =
        scan_block_body;
}

/// Lanes of 32 scores are tested first: does any a_j + δ_max reach the limit? (An OR of
/// comparisons, which the compiler turns into a few vector instructions; a lane's maximum would be a
/// float reduction it may not reorder. Rounding is monotonic, so the test is the same as
/// max_j(a_j) + δ_max ≥ L, and a NaN never passes it.) Only a lane that passes is looked at item
/// by item.
#[inline(always)]
fn scan_block_body(norms: &[f32], abs_bias: &[f32], row: &mut Row, s: &[u16], at: usize) {
    const LANE: usize = 32;
    let dm = row.delta_max;
    let mut l = row.limit();
    for (c, lane) in s.chunks(LANE).enumerate() {
        let mut hit = false;
        for &x in lane {
            hit |= reaches(bf16_to_f32(x) + dm, l);
        }
        if !hit {
            continue;
        }
        for (t, &x) in lane.iter().enumerate() {
            let a = bf16_to_f32(x);
            if !reaches(a + dm, l) {
                continue;
            }
            let j = at + c * LANE + t; // 0-based row of the matrix
            let delta = row.c_norm * norms[j] + row.c * abs_bias[j];
            let up = a + delta;
            if !reaches(up, l) {
                continue;
            }
            let idx = j + 1;
            if !row.excl.is_empty() && row.excl.binary_search(&idx).is_ok() {
                continue;
            }
            row.cands.push((idx, up));
            row.lower.offer(idx, a - delta);
            l = row.limit();
        }
    }
    row.maybe_compact();
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
        * (1.0 + 1e-6)
}
