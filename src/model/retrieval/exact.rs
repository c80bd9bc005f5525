//! Exact retrieval: every item scored, the best k kept, and only B × k results leave the device.
//!
//! Two strategies give identical answers (tested against `rank::top_k` on the full score matrix):
//! * [`Strategy::Blocked`] (CPU): the item matrix is scanned in blocks small enough to stay in cache;
//!   each block's (B × block) scores are written by one GEMM into a reused buffer and ranked while hot,
//!   so the B × N score matrix never exists (at 1M items and B = 32 it would be 128 MB written and
//!   read back per batch).
//! * [`Strategy::DeviceTopk`] (CUDA): one GEMM, exclusions masked to −∞ on the device, libtorch
//!   `topk` of k + 1, and only those B × (k + 1) values come back. libtorch's `topk` does not promise
//!   an order among equal scores, so a row whose (k+1)-th value ties its k-th (or holds a NaN) is
//!   re-ranked from its full score row with the CPU routine: the tie policy stays exactly
//!   `rank::top_k`'s.
//!
//! Rows with `candidates` never touch the full matrix: only the candidates' rows are gathered.
use super::super::rank::{self, TopK};
use super::super::RankSpec;
use super::parallel::{scan_ranges, RangePart};
use std::collections::HashSet;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Blocked,
    DeviceTopk,
}

impl Strategy {
    /// The strategy for a device: a blocked scan where the host ranks, top-k on an accelerator.
    pub fn for_device(device: Device) -> Strategy {
        match device {
            Device::Cpu => Strategy::Blocked,
            _ => Strategy::DeviceTopk,
        }
    }
}

/// Score elements per block of the blocked scan (B × block floats, 1 MiB): small enough for L2.
const BLOCK_ELEMS: usize = 256 * 1024;

/// Catalogues from this size up are split across threads and scanned in bf16 first when `auto`
/// (below it the scan is a small share of a request and a thread hand-off costs more than it saves).
pub const LARGE_CATALOGUE: usize = 65_536;

/// Whether the CPU scan takes a bf16 first pass (answers are exact either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScanPrecision {
    /// bf16 for catalogues of [`LARGE_CATALOGUE`] items or more on a CPU with bf16 arithmetic
    /// (AVX-512 BF16 or AMX), f32 otherwise.
    #[default]
    Auto,
    F32,
    Bf16,
}

/// How the CPU scan runs: over how many threads (each scans a contiguous range of the items with
/// one libtorch thread, and the ranges' top lists are merged) and whether a bf16 first pass
/// (`bf16.rs`, exact answers) is used.
pub struct Scan {
    pub strategy: Strategy,
    pub threads: usize,
    pub bf16: Option<super::bf16::Items>,
}

impl Scan {
    /// One thread, f32: what every model starts with.
    pub fn plain(strategy: Strategy) -> Scan {
        Scan {
            strategy,
            threads: 1,
            bf16: None,
        }
    }
}

/// [`retrieve`] with a configured scan.
pub fn retrieve_scan(
    scan: &Scan,
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    specs: &[RankSpec],
) -> Vec<Vec<(usize, f32)>> {
    retrieve_with(scan, BLOCK_ELEMS, z, emb, bias, specs)
}

/// Ranks each query vector `z` (B, d) against the item matrix `emb` (N, d) with biases `bias` (N):
/// one ranked list of (item index, score) per spec, exactly as `rank::top_k` would rank the full
/// score row z·Eᵀ + b. One thread, f32.
pub fn retrieve(
    strategy: Strategy,
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    specs: &[RankSpec],
) -> Vec<Vec<(usize, f32)>> {
    retrieve_blocks(strategy, BLOCK_ELEMS, z, emb, bias, specs)
}

/// [`retrieve`] with the blocked scan's block size in score elements (tests use small blocks).
fn retrieve_blocks(
    strategy: Strategy,
    block_elems: usize,
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    specs: &[RankSpec],
) -> Vec<Vec<(usize, f32)>> {
    retrieve_with(&Scan::plain(strategy), block_elems, z, emb, bias, specs)
}

fn retrieve_with(
    scan: &Scan,
    block_elems: usize,
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    specs: &[RankSpec],
) -> Vec<Vec<(usize, f32)>> {
    let n = emb.size()[0] as usize;
    let mut out: Vec<Vec<(usize, f32)>> = vec![Vec::new(); specs.len()];
    let mut full_rows = Vec::new();
    let mut cand_rows = Vec::new();
    for (r, s) in specs.iter().enumerate() {
        if s.k == 0 {
            continue;
        }
        match &s.candidates {
            Some(c) => cand_rows.push((r, c.as_slice())),
            None => full_rows.push(r),
        }
    }
    if !cand_rows.is_empty() {
        for (r, list) in rank_candidates(z, emb, bias, specs, &cand_rows) {
            out[r] = list;
        }
    }
    if !full_rows.is_empty() && n > 0 {
        let lists = match scan.strategy {
            Strategy::Blocked => blocked_scan(scan, block_elems, z, emb, bias, specs, &full_rows),
            Strategy::DeviceTopk => device_topk(z, emb, bias, specs, &full_rows),
        };
        for (r, list) in full_rows.into_iter().zip(lists) {
            out[r] = list;
        }
    }
    out
}

/// Each row's exclusions as a sorted, deduplicated list (binary-searched only for the few items that
/// pass the running threshold).
pub(super) fn sorted_exclusions(spec: &RankSpec) -> Vec<usize> {
    let mut ex = spec.exclude.clone();
    ex.sort_unstable();
    ex.dedup();
    ex
}

/// The CPU scan of `rows`: in bf16 first when the scan has the copy, else in f32; over the
/// scan's threads either way.
fn blocked_scan(
    scan: &Scan,
    block_elems: usize,
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    specs: &[RankSpec],
    rows: &[usize],
) -> Vec<Vec<(usize, f32)>> {
    let zf = select_rows(z, rows).to_kind(Kind::Float).contiguous();
    let excl: Vec<Vec<usize>> = rows.iter().map(|&r| sorted_exclusions(&specs[r])).collect();
    let ks: Vec<usize> = rows.iter().map(|&r| specs[r].k).collect();
    if let Some(items) = &scan.bf16 {
        let got =
            super::bf16::retrieve(items, scan.threads, block_elems, &zf, emb, bias, &ks, &excl);
        if let Some(lists) = got {
            return lists;
        }
    }
    let run = |p: RangePart| blocked(block_elems, &p, &ks, &excl);
    let mut parts = scan_ranges(&zf, emb, bias, scan.threads, run).into_iter();
    let mut tops = parts.next().unwrap_or_default();
    for p in parts {
        for (top, other) in tops.iter_mut().zip(p) {
            top.absorb(other);
        }
    }
    tops.into_iter().map(TopK::into_vec).collect()
}

/// The f32 scan of one range of the items: each row's best k of that range.
fn blocked(block_elems: usize, p: &RangePart, ks: &[usize], excl: &[Vec<usize>]) -> Vec<TopK> {
    let (zf, emb, bias) = (&p.z, &p.emb, &p.bias);
    let n = emb.size()[0] as usize;
    let b = ks.len();
    let block = (block_elems / b).clamp(1, n.max(1));
    let buf = Tensor::empty([(b * block) as i64], (Kind::Float, Device::Cpu));
    let mut tops: Vec<TopK> = ks.iter().map(|&k| TopK::new(k)).collect();
    let mut lo = 0;
    while lo < n {
        let len = block.min(n - lo);
        let out = buf
            .narrow(0, 0, (b * len) as i64)
            .view([b as i64, len as i64]);
        let _ = bias.narrow(0, lo as i64, len as i64).addmm_out(
            &out,
            zf,
            &emb.narrow(0, lo as i64, len as i64).tr(),
        );
        // SAFETY: `out` is a contiguous CPU float tensor of b × len elements that lives (through
        // `buf`) until the end of this iteration; nothing writes to it while the slice is read.
        let scores = unsafe { std::slice::from_raw_parts(out.data_ptr() as *const f32, b * len) };
        for (i, row) in scores.chunks_exact(len).enumerate() {
            scan_block(&mut tops[i], row, p.offset + lo, &excl[i]);
        }
        lo += len;
    }
    tops
}

/// Offers one block of a row (column j = item index lo + j + 1). Blocks come in ascending item
/// order, so once the list is full an item must score strictly above the current k-th to enter:
/// equal scores at higher indices lose the tie. Almost every item fails that test, so the row is
/// read in lanes of 16 whose maximum (a vectorised loop) is compared first; only a lane holding a
/// winner is looked at item by item.
#[inline]
fn scan_block(top: &mut TopK, row: &[f32], lo: usize, excl: &[usize]) {
    const LANE: usize = 16;
    let offer = |top: &mut TopK, j: usize, s: f32| {
        let idx = lo + j + 1;
        if excl.is_empty() || excl.binary_search(&idx).is_err() {
            top.offer(idx, s);
        }
    };
    let mut j = 0;
    while j < row.len() && !top.is_full() {
        offer(top, j, row[j]);
        j += 1;
    }
    let Some((_, mut t)) = top.threshold() else {
        return;
    };
    for (c, lane) in row[j..].chunks(LANE).enumerate() {
        // NaN never compares greater, so it never enters (as in TopK::offer).
        let m = lane
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        if m > t {
            let base = j + c * LANE;
            for (i, &x) in lane.iter().enumerate() {
                if x > t {
                    offer(top, base + i, x);
                    t = top.threshold().map_or(t, |(_, s)| s);
                }
            }
        }
    }
}

fn device_topk(
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    specs: &[RankSpec],
    rows: &[usize],
) -> Vec<Vec<(usize, f32)>> {
    let n = emb.size()[0] as usize;
    let dev = emb.device();
    let zf = select_rows(z, rows);
    let scores = bias.addmm(&zf, &emb.tr());
    // Exclusions as flat (row × n + column) positions, masked on the device.
    let mut flat: Vec<i64> = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        for &idx in &specs[r].exclude {
            if (1..=n).contains(&idx) {
                flat.push((i * n + idx - 1) as i64);
            }
        }
    }
    if !flat.is_empty() {
        let pos = Tensor::from_slice(&flat).to_device(dev);
        let _ = scores.view(-1).index_fill_(0, &pos, f64::NEG_INFINITY);
    }
    let k_max = rows.iter().map(|&r| specs[r].k).max().unwrap_or(0);
    let kk = (k_max + 1).min(n);
    let (vals, idxs) = scores.topk(kk as i64, 1, true, true);
    let vals = Vec::<f32>::try_from(vals.to_device(Device::Cpu).to_kind(Kind::Float).view(-1))
        .expect("float values");
    let idxs = Vec::<i64>::try_from(idxs.to_device(Device::Cpu).view(-1)).expect("int64 indices");
    rows.iter()
        .enumerate()
        .map(|(i, &r)| {
            let k = specs[r].k;
            let v = &vals[i * kk..(i + 1) * kk];
            let ix = &idxs[i * kk..(i + 1) * kk];
            // Ambiguous: a NaN among the returned values, or the value just past the k-th ties it
            // (more items may share that score than topk returned, in no defined order).
            let ambiguous =
                v.iter().any(|x| x.is_nan()) || (k < kk && v[k] == v[k - 1] && v[k].is_finite());
            if ambiguous {
                let row = Vec::<f32>::try_from(
                    scores
                        .get(i as i64)
                        .to_device(Device::Cpu)
                        .to_kind(Kind::Float),
                )
                .expect("float row");
                return rank::top_k(&row, k, &specs[r].exclude, None);
            }
            let mut top = TopK::new(k);
            for (&s, &j) in v.iter().zip(ix) {
                // −∞ is a masked (excluded) item; a finite model never scores a real one −∞.
                if s != f32::NEG_INFINITY {
                    top.offer(j as usize + 1, s);
                }
            }
            top.into_vec()
        })
        .collect()
}

/// Re-ranking: gathers only the candidates' rows of the item matrix and scores them against their
/// query; same filtering as `rank::top_k` (out of range, excluded and repeated candidates dropped).
fn rank_candidates(
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    specs: &[RankSpec],
    rows: &[(usize, &[usize])],
) -> Vec<(usize, Vec<(usize, f32)>)> {
    let n = emb.size()[0] as usize;
    let dev = emb.device();
    let mut cols: Vec<i64> = Vec::new();
    let mut owner: Vec<i64> = Vec::new();
    let mut spans = Vec::with_capacity(rows.len());
    for &(r, cands) in rows {
        let excluded: HashSet<usize> = specs[r].exclude.iter().copied().collect();
        let mut seen = HashSet::with_capacity(cands.len());
        let start = cols.len();
        for &idx in cands {
            if idx == 0 || idx > n || excluded.contains(&idx) || !seen.insert(idx) {
                continue;
            }
            cols.push(idx as i64 - 1);
            owner.push(r as i64);
        }
        spans.push((r, start, cols.len()));
    }
    let scores: Vec<f32> = if cols.is_empty() {
        Vec::new()
    } else {
        let c = Tensor::from_slice(&cols).to_device(dev);
        let o = Tensor::from_slice(&owner).to_device(dev);
        let s = (emb.index_select(0, &c) * z.index_select(0, &o)).sum_dim_intlist(
            [1i64].as_slice(),
            false,
            Kind::Float,
        ) + bias.index_select(0, &c);
        Vec::<f32>::try_from(s.to_device(Device::Cpu).to_kind(Kind::Float)).expect("scores")
    };
    spans
        .into_iter()
        .map(|(r, a, b)| {
            let mut top = TopK::new(specs[r].k);
            for j in a..b {
                top.offer(cols[j] as usize + 1, scores[j]);
            }
            (r, top.into_vec())
        })
        .collect()
}

fn select_rows(z: &Tensor, rows: &[usize]) -> Tensor {
    if rows.len() as i64 == z.size()[0] && rows.iter().enumerate().all(|(i, &r)| i == r) {
        return z.shallow_clone();
    }
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    z.index_select(0, &Tensor::from_slice(&idx).to_device(z.device()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, m: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % m
        }
        /// Small integers: every dot product is exact in f32 whatever the summation order, so the
        /// strategies must agree bit for bit, and equal scores (ties) are common.
        fn small(&mut self) -> f32 {
            self.next(5) as f32 - 2.0
        }
        fn float(&mut self) -> f32 {
            self.next(1_000_000) as f32 / 500_000.0 - 1.0
        }
    }

    fn tensor(v: Vec<f32>, shape: &[i64]) -> Tensor {
        Tensor::from_slice(&v).view(shape)
    }

    fn random_specs(r: &mut Lcg, b: usize, n: usize) -> Vec<RankSpec> {
        (0..b)
            .map(|_| {
                let k = match r.next(6) {
                    0 => n + 3,
                    1 => 1,
                    _ => 1 + r.next(20) as usize,
                };
                let n_ex = match r.next(4) {
                    0 => 0,
                    1 => 40 + r.next(60) as usize, // long lists (the bitmap path of rank::top_k)
                    _ => r.next(8) as usize,
                };
                // Out-of-range and repeated exclusions are allowed and ignored.
                let exclude = (0..n_ex).map(|_| r.next(n as u64 + 3) as usize).collect();
                let candidates = (r.next(4) == 0).then(|| {
                    (0..1 + r.next(30))
                        .map(|_| r.next(n as u64 + 3) as usize)
                        .collect()
                });
                RankSpec {
                    k,
                    exclude,
                    candidates,
                }
            })
            .collect()
    }

    /// The reference: the full score matrix ranked by `rank::top_k`, as serving did before.
    fn reference(
        z: &Tensor,
        emb: &Tensor,
        bias: &Tensor,
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>> {
        let n = emb.size()[0] as usize;
        let full = Vec::<f32>::try_from(bias.addmm(z, &emb.tr()).contiguous().view(-1)).unwrap();
        full.chunks(n)
            .zip(specs)
            .map(|(row, s)| rank::top_k(row, s.k, &s.exclude, s.candidates.as_deref()))
            .collect()
    }

    /// Same items in the same order in every list, scores equal to 1e-5 (relative): what float
    /// scores computed by differently shaped GEMMs can promise. Names the first difference.
    fn assert_same_ranking(got: &[Vec<(usize, f32)>], want: &[Vec<(usize, f32)>], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            let ids = |l: &[(usize, f32)]| l.iter().map(|x| x.0).collect::<Vec<_>>();
            if ids(g) != ids(w) {
                let at = (0..g.len().min(w.len())).find(|&x| g[x].0 != w[x].0);
                panic!(
                    "{what}: lengths {} vs {}, first difference at {at:?}: {:?} vs {:?}",
                    g.len(),
                    w.len(),
                    at.map(|x| &g[x.saturating_sub(2)..(x + 3).min(g.len())]),
                    at.map(|x| &w[x.saturating_sub(2)..(x + 3).min(w.len())])
                );
            }
            for (a, b) in g.iter().zip(w) {
                assert!(
                    (a.1 - b.1).abs() <= 1e-5 * (1.0 + b.1.abs()),
                    "{what}: {a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn strategies_match_the_cpu_ranking_exactly_with_ties() {
        let mut r = Lcg(42);
        for trial in 0..60 {
            let n = 1 + r.next(2500) as usize;
            let d = 1 + r.next(8) as usize;
            let b = 1 + r.next(9) as usize;
            let emb = tensor(
                (0..n * d).map(|_| r.small()).collect(),
                &[n as i64, d as i64],
            );
            let bias = tensor((0..n).map(|_| r.small() / 2.0).collect(), &[n as i64]);
            let z = tensor(
                (0..b * d).map(|_| r.small()).collect(),
                &[b as i64, d as i64],
            );
            let specs = random_specs(&mut r, b, n);
            let want = reference(&z, &emb, &bias, &specs);
            for (strategy, block) in [
                (Strategy::Blocked, BLOCK_ELEMS),
                (Strategy::Blocked, 1 + r.next(700) as usize),
                (Strategy::DeviceTopk, BLOCK_ELEMS),
            ] {
                let got = retrieve_blocks(strategy, block, &z, &emb, &bias, &specs);
                assert_eq!(
                    got, want,
                    "trial {trial}, {strategy:?}, block {block}, n {n}, specs {specs:?}"
                );
            }
        }
    }

    #[test]
    fn strategies_match_on_random_float_scores() {
        let mut r = Lcg(7);
        for _ in 0..20 {
            let (n, d, b) = (3000 + r.next(2000) as usize, 16, 1 + r.next(12) as usize);
            let emb = tensor(
                (0..n * d).map(|_| r.float()).collect(),
                &[n as i64, d as i64],
            );
            let bias = tensor((0..n).map(|_| r.float()).collect(), &[n as i64]);
            let z = tensor(
                (0..b * d).map(|_| r.float()).collect(),
                &[b as i64, d as i64],
            );
            let specs = random_specs(&mut r, b, n);
            let want = reference(&z, &emb, &bias, &specs);
            for strategy in [Strategy::Blocked, Strategy::DeviceTopk] {
                let got = retrieve_blocks(strategy, 4096, &z, &emb, &bias, &specs);
                assert_same_ranking(&got, &want, &format!("{strategy:?}"));
            }
        }
    }

    #[test]
    fn ties_at_the_boundary_keep_the_lowest_indices() {
        // Every item scores the same: the first k indices not excluded must come back, in order.
        let n = 1000;
        let emb = Tensor::ones([n, 4], (Kind::Float, Device::Cpu));
        let bias = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let z = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
        let specs = vec![
            RankSpec {
                k: 5,
                exclude: vec![1, 3],
                candidates: None,
            },
            RankSpec {
                k: 3,
                exclude: vec![],
                candidates: Some(vec![900, 7, 500, 7]),
            },
        ];
        for strategy in [Strategy::Blocked, Strategy::DeviceTopk] {
            let got = retrieve_blocks(strategy, 64, &z, &emb, &bias, &specs);
            let ids: Vec<Vec<usize>> = got
                .iter()
                .map(|l| l.iter().map(|x| x.0).collect())
                .collect();
            assert_eq!(
                ids,
                vec![vec![2, 4, 5, 6, 7], vec![7, 500, 900]],
                "{strategy:?}"
            );
        }
    }

    #[test]
    fn everything_excluded_returns_nothing() {
        let emb = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        let bias = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let z = Tensor::ones([1, 2], (Kind::Float, Device::Cpu));
        let specs = vec![RankSpec {
            k: 10,
            exclude: vec![1, 2, 3],
            candidates: None,
        }];
        for strategy in [Strategy::Blocked, Strategy::DeviceTopk] {
            assert_eq!(retrieve(strategy, &z, &emb, &bias, &specs), vec![vec![]]);
        }
    }

    /// The scans a server can be configured with: f32 over 1 and 3 threads, bf16 first pass over
    /// 1 and 2 threads.
    fn scans(emb: &Tensor, bias: &Tensor) -> Vec<Scan> {
        let bf16 = || Some(super::super::bf16::Items::new(emb, bias).expect("bf16 copy"));
        vec![
            Scan::plain(Strategy::Blocked),
            Scan {
                strategy: Strategy::Blocked,
                threads: 3,
                bf16: None,
            },
            Scan {
                strategy: Strategy::Blocked,
                threads: 1,
                bf16: bf16(),
            },
            Scan {
                strategy: Strategy::Blocked,
                threads: 2,
                bf16: bf16(),
            },
        ]
    }

    #[test]
    fn threaded_and_bf16_scans_rank_exactly_with_ties() {
        // Small integers are exact in bf16 and their sums exact in f32: every scan must agree bit
        // for bit with the reference, ties (frequent here) included.
        let mut r = Lcg(11);
        for trial in 0..30 {
            let n = 1 + r.next(3000) as usize;
            let d = 1 + r.next(8) as usize;
            let b = 1 + r.next(9) as usize;
            let emb = tensor(
                (0..n * d).map(|_| r.small()).collect(),
                &[n as i64, d as i64],
            );
            let bias = tensor((0..n).map(|_| r.small() / 2.0).collect(), &[n as i64]);
            let z = tensor(
                (0..b * d).map(|_| r.small()).collect(),
                &[b as i64, d as i64],
            );
            let specs = random_specs(&mut r, b, n);
            let want = reference(&z, &emb, &bias, &specs);
            for (i, scan) in scans(&emb, &bias).iter().enumerate() {
                let block = 1 + r.next(900) as usize;
                let got = retrieve_with(scan, block, &z, &emb, &bias, &specs);
                assert_eq!(got, want, "trial {trial}, scan {i}, block {block}, n {n}");
            }
        }
    }

    #[test]
    fn bf16_first_pass_returns_the_f32_ranking_on_float_scores() {
        // Scores of trained-model scale, with near-ties: the bf16 pass is off by up to ~1% of a
        // score, so only its error bound keeps the answer exact.
        let mut r = Lcg(5);
        for _ in 0..12 {
            let (n, d, b) = (5000 + r.next(20_000) as usize, 32, 1 + r.next(16) as usize);
            let emb = tensor(
                (0..n * d).map(|_| r.float()).collect(),
                &[n as i64, d as i64],
            );
            // Near-duplicates: item i + 1 copies item i plus a tiny change, so many scores lie
            // closer together than bf16 can tell apart.
            emb.narrow(0, 1, (n - 1) as i64).copy_(
                &(emb.narrow(0, 0, (n - 1) as i64)
                    + Tensor::randn([(n - 1) as i64, d as i64], (Kind::Float, Device::Cpu)) * 1e-4),
            );
            let bias = tensor((0..n).map(|_| r.float()).collect(), &[n as i64]);
            let z = tensor(
                (0..b * d).map(|_| r.float() * 4.0).collect(),
                &[b as i64, d as i64],
            );
            // k up to 50, as served: a full ranking of thousands of random scores holds pairs 1 ulp
            // apart, whose order differs between any two GEMM shapes (the f32 scan's too).
            let mut specs = random_specs(&mut r, b, n);
            for s in &mut specs {
                s.k = s.k.min(50);
            }
            let want = reference(&z, &emb, &bias, &specs);
            for (i, scan) in scans(&emb, &bias).iter().enumerate() {
                let got = retrieve_with(scan, 8192, &z, &emb, &bias, &specs);
                assert_same_ranking(&got, &want, &format!("scan {i}"));
            }
        }
    }

    #[test]
    fn bf16_first_pass_survives_a_flat_catalogue() {
        // Every item ties: every item stays a candidate, the list outgrows its compaction
        // allowance, and the lowest indices not excluded must still come back in order.
        let n = 20_000;
        let emb = Tensor::ones([n, 4], (Kind::Float, Device::Cpu));
        let bias = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let z = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
        let specs = vec![RankSpec {
            k: 4,
            exclude: vec![2, 3],
            candidates: None,
        }];
        for scan in scans(&emb, &bias) {
            let got = retrieve_with(&scan, 512, &z, &emb, &bias, &specs);
            assert_eq!(got, vec![vec![(1, 4.0), (4, 4.0), (5, 4.0), (6, 4.0)]]);
        }
    }

    #[test]
    fn non_finite_query_vectors_fall_back_to_the_f32_scan() {
        let emb = Tensor::ones([300, 2], (Kind::Float, Device::Cpu));
        let bias = Tensor::zeros([300], (Kind::Float, Device::Cpu));
        let items = super::super::bf16::Items::new(&emb, &bias).unwrap();
        let z = tensor(vec![f32::INFINITY, 1.0, 1.0, 1.0], &[2, 2]);
        let ks = [3, 3];
        let excl = [vec![], vec![]];
        assert!(
            super::super::bf16::retrieve(&items, 1, 4096, &z, &emb, &bias, &ks, &excl).is_none()
        );
        let scan = Scan {
            strategy: Strategy::Blocked,
            threads: 2,
            bf16: Some(items),
        };
        let specs = vec![
            RankSpec {
                k: 3,
                ..Default::default()
            };
            2
        ];
        assert_eq!(
            retrieve_with(&scan, 4096, &z, &emb, &bias, &specs),
            reference(&z, &emb, &bias, &specs)
        );
    }
}
