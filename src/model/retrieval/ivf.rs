//! Approximate retrieval by an inverted file (IVF): the items clustered by k-means into lists, each
//! list stored contiguously; a query scores the lists' centroids, scans its `probe` best lists in
//! full and keeps its best k. Every returned score is the item's own f32 score z·e + b (summed in
//! another order than the exact GEMM's, so equal to it within float rounding); what is approximate
//! is only which items are looked at.
//!
//! Why IVF beside the HNSW index (`ann.rs`): on catalogues made of near-duplicates (a trained
//! model's items extended with small perturbations) the HNSW graph's recall@10 fell to 0.25-0.38 at
//! 1M items, and its per-query graph walk cannot share work between the requests of a batch. IVF's
//! recall depends on how many lists are read, not on the data's shape (measured with
//! beauty-2l's items at 200k: recall@10 0.98 reading 1% of 4,096 lists, on both the spread and the
//! near-duplicate catalogue), and a batch reads each probed list once for all the rows that probe
//! it, one item vector against those rows while it sits in L1.
//!
//! Scores are z·e + b, a maximum-inner-product search: the k-means runs on x = [e, b] (L2), and a
//! list is ranked for a query by q·c with q = [z, 1] and c its centroid, the mean score of its items
//! (faiss's IVF with the inner-product metric does the same).
use super::super::rank::TopK;
use super::super::RankSpec;
use super::exact;
use super::parallel::{f32_slice, in_parallel};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// File name of a saved IVF index inside a model directory.
pub const IVF_FILE: &str = "items.ivf.safetensors";

/// k-means rounds when building (the lists' quality levels off after a few).
const KMEANS_ROUNDS: usize = 8;

/// How an IVF index is built and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfParams {
    /// Lists (k-means clusters); 0 = auto, [`auto_lists`].
    pub lists: usize,
    /// Lists read per query; 0 = auto, [`auto_probe`].
    pub probe: usize,
    /// Threads a batch's scan is split over.
    pub threads: usize,
}

impl Default for IvfParams {
    fn default() -> Self {
        IvfParams {
            lists: 0,
            probe: 0,
            threads: 1,
        }
    }
}

/// 8·√N lists, at least 1 and at most N: lists of ~√N/8 items.
pub fn auto_lists(n: usize) -> usize {
    ((8.0 * (n as f64).sqrt()).round() as usize).clamp(1, n.max(1))
}

/// Enough lists for about [`AUTO_PROBE_ITEMS`] items per query (at least 16; all of them where
/// there are fewer). Recall follows the number of items read more than the catalogue's size;
/// measured on beauty-2l's items extended with noise (real Beauty histories, seen items masked):
/// at 100k items in 2,530 lists, recall@10 0.963 / 0.985 reading 100 / 200 lists (4k / 8k items);
/// at 1M in 8,000 lists, 0.978 / 0.990 / 0.996 reading 32 / 64 / 128 lists (4k / 8k / 16k items).
pub fn auto_probe(lists: usize, items: usize) -> usize {
    let per_list = (items as f64 / lists.max(1) as f64).max(1.0);
    ((AUTO_PROBE_ITEMS as f64 / per_list).ceil() as usize)
        .max(16)
        .min(lists)
}

/// Items an automatic probe reads per query.
pub const AUTO_PROBE_ITEMS: usize = 8192;

pub struct IvfIndex {
    /// (L, d + 1) f32, on the CPU: the k-means centroids of x = [e, b].
    centroids: Tensor,
    lists: Lists,
    probe: usize,
    threads: usize,
}

/// The items laid out list by list (plain memory, shared by the scan's threads).
struct Lists {
    dim: usize,
    /// List l holds positions offsets[l]..offsets[l + 1].
    offsets: Vec<usize>,
    /// The item index (1-based) at each position.
    items: Vec<u32>,
    /// The item vectors in list order, N × d, and their biases.
    emb: Vec<f32>,
    bias: Vec<f32>,
}

/// x = [e, b] (N, d + 1) f32 on the CPU.
fn augmented(emb: &Tensor, bias: &Tensor) -> Tensor {
    Tensor::cat(&[emb.shallow_clone(), bias.unsqueeze(1)], 1)
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
}

fn f32_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view(-1)).expect("float tensor")
}

/// A deterministic stream of pseudo-random numbers (splitmix64): the sample and the first
/// centroids, so a rebuild gives the same index.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `m` distinct indices of 0..n in random order (a partial Fisher-Yates shuffle).
fn sample_indices(n: usize, m: usize, rng: &mut Mix) -> Vec<i64> {
    let mut all: Vec<i64> = (0..n as i64).collect();
    for i in 0..m.min(n) {
        let j = i + (rng.next() % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(m.min(n));
    all
}

/// The nearest centroid (L2) of each row of `x`, over `threads` threads: argmax x·c − |c|²/2, a
/// chunk of rows at a time (a 1M × 8k distance matrix would be 32 GB).
fn nearest(x: &Tensor, c: &Tensor, threads: usize) -> Vec<i64> {
    let n = x.size()[0];
    let half_sq = (c * c).sum_dim_intlist(1, false, Kind::Float) * 0.5;
    let ct = c.tr().contiguous();
    let chunk = 2048i64;
    let t = threads.clamp(1, (n as usize).div_ceil(chunk as usize).max(1));
    let parts: Vec<(Tensor, Tensor, Tensor)> = (0..t)
        .map(|i| {
            let lo = n * i as i64 / t as i64;
            let hi = n * (i as i64 + 1) / t as i64;
            (
                x.narrow(0, lo, hi - lo),
                ct.shallow_clone(),
                half_sq.shallow_clone(),
            )
        })
        .collect();
    let run = |(x, ct, h): (Tensor, Tensor, Tensor)| -> Vec<i64> {
        let rows = x.size()[0];
        let mut out = Vec::with_capacity(rows as usize);
        let mut at = 0;
        while at < rows {
            let len = chunk.min(rows - at);
            let s = x.narrow(0, at, len).matmul(&ct) - &h;
            out.extend(Vec::<i64>::try_from(s.argmax(1, false)).expect("argmax"));
            at += len;
        }
        out
    };
    let parts = if t == 1 {
        parts.into_iter().map(run).collect::<Vec<_>>()
    } else {
        in_parallel(parts, run)
    };
    parts.concat()
}

/// From this many lists on, an item's list is looked for among the lists of its [`GROUP_PROBE`]
/// nearest groups (the centroids clustered into √L groups) instead of among all of them.
const GROUPED_FROM: usize = 2048;
/// Groups searched per item: 8 of √L, about 8/√L of the centroids (5% at 25k lists).
const GROUP_PROBE: usize = 8;

/// The list of each row of `x`: its nearest centroid, or at [`GROUPED_FROM`] lists and more the
/// nearest among its nearest groups' centroids. An item then and then lands in a list that is
/// not its very nearest (the index stays correct, every score exact: only which items a query
/// reads together changes). At 10M items, 25,298 lists, the exact search was 33 TFLOP of a
/// 65-wide product, 24 minutes here.
fn assign(x: &Tensor, c: &Tensor, threads: usize) -> Vec<i64> {
    if (c.size()[0] as usize) < GROUPED_FROM {
        nearest(x, c, threads)
    } else {
        nearest_grouped(x, c, threads)
    }
}

/// Centroids grouped by k-means: group g's centroids are `members[offsets[g]..offsets[g + 1]]`.
struct Groups {
    /// (G, dim) row-major, and −|g|²/2 per group.
    centres: Vec<f32>,
    centre_half: Vec<f32>,
    offsets: Vec<usize>,
    members: Vec<u32>,
    /// The centroids (L, dim) and −|c|²/2 per centroid.
    cents: Vec<f32>,
    cent_half: Vec<f32>,
    dim: usize,
}

/// A counting sort of the rows by their bucket (`of[i]` in 0..buckets, checked by the caller):
/// bucket b holds `order[offsets[b]..offsets[b + 1]]`, each row i written as i + base, in row order.
fn bucket(of: &[i64], buckets: usize, base: u32) -> (Vec<usize>, Vec<u32>) {
    let mut offsets = vec![0usize; buckets + 1];
    for &b in of {
        offsets[b as usize + 1] += 1;
    }
    for b in 0..buckets {
        offsets[b + 1] += offsets[b];
    }
    let mut next = offsets.clone();
    let mut order = vec![0u32; of.len()];
    for (i, &b) in of.iter().enumerate() {
        order[next[b as usize]] = i as u32 + base;
        next[b as usize] += 1;
    }
    (offsets, order)
}

/// −|v|²/2 for each row of a (rows, dim) slice.
fn neg_half_sq(v: &[f32], dim: usize) -> Vec<f32> {
    v.chunks_exact(dim)
        .map(|r| -0.5 * r.iter().map(|x| x * x).sum::<f32>())
        .collect()
}

impl Groups {
    fn new(c: &Tensor, threads: usize) -> Groups {
        let (l, dim) = (c.size()[0] as usize, c.size()[1] as usize);
        let g = ((l as f64).sqrt().ceil() as usize).min(l);
        let centres_t = kmeans(c, g, threads);
        let (offsets, members) = bucket(&nearest(c, &centres_t, threads), g, 0);
        let (centres, cents) = (f32_vec(&centres_t), f32_vec(c));
        Groups {
            centre_half: neg_half_sq(&centres, dim),
            cent_half: neg_half_sq(&cents, dim),
            centres,
            cents,
            offsets,
            members,
            dim,
        }
    }

    /// The nearest centroid of `row` among the members of its [`GROUP_PROBE`] nearest groups (all
    /// centroids if those groups are empty). Ties go to the lower index, as `argmax` does.
    #[inline(always)]
    fn nearest<const FUSED: bool>(&self, row: &[f32]) -> i64 {
        let d = self.dim;
        let mut best_groups = [(f32::NEG_INFINITY, usize::MAX); GROUP_PROBE];
        for (gi, (c, h)) in self
            .centres
            .chunks_exact(d)
            .zip(&self.centre_half)
            .enumerate()
        {
            let s = dot::<FUSED>(row, c) + h;
            if s > best_groups[GROUP_PROBE - 1].0 {
                let mut at = GROUP_PROBE - 1;
                while at > 0 && s > best_groups[at - 1].0 {
                    best_groups[at] = best_groups[at - 1];
                    at -= 1;
                }
                best_groups[at] = (s, gi);
            }
        }
        // Plain loops, no closures: a closure is a function of its own, compiled without the
        // caller's target features, and its `mul_add` became a call to libm's fmaf (10x slower).
        let mut best = (f32::NEG_INFINITY, u32::MAX);
        for &(_, gi) in &best_groups {
            if gi == usize::MAX {
                continue;
            }
            for &m in &self.members[self.offsets[gi]..self.offsets[gi + 1]] {
                let at = m as usize;
                let s = dot::<FUSED>(row, &self.cents[at * d..(at + 1) * d]) + self.cent_half[at];
                if s > best.0 || (s == best.0 && m < best.1) {
                    best = (s, m);
                }
            }
        }
        if best.1 == u32::MAX {
            for (m, (c, h)) in self.cents.chunks_exact(d).zip(&self.cent_half).enumerate() {
                let s = dot::<FUSED>(row, c) + h;
                if s > best.0 {
                    best = (s, m as u32);
                }
            }
        }
        best.1 as i64
    }
}

/// [`assign`] for many lists: rows split over `threads`, each row on its own (so the answer does
/// not depend on the number of threads).
fn nearest_grouped(x: &Tensor, c: &Tensor, threads: usize) -> Vec<i64> {
    let groups = Groups::new(c, threads);
    let x = x.to_kind(Kind::Float).contiguous();
    let (n, d) = (x.size()[0] as usize, groups.dim);
    if n == 0 {
        return Vec::new();
    }
    let xv = f32_slice(&x);
    let t = threads.clamp(1, n);
    let parts: Vec<&[f32]> = (0..t)
        .map(|i| &xv[n * i / t * d..n * (i + 1) / t * d])
        .collect();
    let run = |rows: &[f32]| -> Vec<i64> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("fma") {
                // SAFETY: the CPU has AVX-512F and FMA (checked just above).
                return unsafe { grouped_avx512(&groups, rows) };
            }
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                return unsafe { grouped_avx2(&groups, rows) };
            }
        }
        grouped_body::<false>(&groups, rows)
    };
    let out = if t == 1 {
        vec![run(parts[0])]
    } else {
        in_parallel(parts, run)
    };
    out.concat()
}

#[inline(always)]
fn grouped_body<const FUSED: bool>(g: &Groups, rows: &[f32]) -> Vec<i64> {
    let mut out = Vec::with_capacity(rows.len() / g.dim.max(1));
    for r in rows.chunks_exact(g.dim) {
        out.push(g.nearest::<FUSED>(r));
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn grouped_avx512(g: &Groups, rows: &[f32]) -> Vec<i64> {
    grouped_body::<true>(g, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grouped_avx2(g: &Groups, rows: &[f32]) -> Vec<i64> {
    grouped_body::<true>(g, rows)
}

/// k-means (L2) of the rows of `x` into `l` centroids, fitted on a sample of 16 rows per list (at
/// least 65,536 rows, at most all): [`KMEANS_ROUNDS`] rounds from `l` distinct sampled rows. A list
/// left empty keeps its previous centroid.
fn kmeans(x: &Tensor, l: usize, threads: usize) -> Tensor {
    let n = x.size()[0] as usize;
    let mut rng = Mix(0x05EE_D1DF);
    let m = (16 * l).max(65_536).min(n);
    let sample = x.index_select(0, &Tensor::from_slice(&sample_indices(n, m, &mut rng)));
    let mut c = sample.narrow(0, 0, l as i64).copy();
    let dim = x.size()[1];
    for _ in 0..KMEANS_ROUNDS {
        let assign = Tensor::from_slice(&assign(&sample, &c, threads));
        let sums = Tensor::zeros([l as i64, dim], (Kind::Float, Device::Cpu))
            .index_add(0, &assign, &sample);
        let counts = assign
            .bincount::<Tensor>(None, l as i64)
            .to_kind(Kind::Float);
        let filled = counts.gt(0.0).unsqueeze(1);
        let means = sums / counts.clamp_min(1.0).unsqueeze(1);
        c = means.where_self(&filled, &c);
    }
    c
}

impl IvfIndex {
    /// Clusters the item matrix into `params.lists` lists (0 = auto) with `build_threads` threads.
    pub fn build(
        emb: &Tensor,
        bias: &Tensor,
        params: IvfParams,
        build_threads: usize,
    ) -> Result<IvfIndex, String> {
        let n = emb.size()[0] as usize;
        if n == 0 {
            return Err("the catalogue is empty".into());
        }
        let lists = match params.lists {
            0 => auto_lists(n),
            l if l > n => return Err(format!("{l} lists for {n} items: at most one per item")),
            l => l,
        };
        let x = augmented(emb, bias);
        let centroids = kmeans(&x, lists, build_threads);
        let assign = assign(&x, &centroids, build_threads);
        IvfIndex::from_assignment(emb, bias, centroids, &assign, params)
    }

    /// Lays the items out list by list.
    fn from_assignment(
        emb: &Tensor,
        bias: &Tensor,
        centroids: Tensor,
        assign: &[i64],
        params: IvfParams,
    ) -> Result<IvfIndex, String> {
        let (n, d) = emb.size2().map_err(|e| e.to_string())?;
        let (n, d) = (n as usize, d as usize);
        let lists = centroids.size()[0] as usize;
        if assign.len() != n {
            return Err(format!("{} list entries for {n} items", assign.len()));
        }
        if let Some(a) = assign.iter().find(|&&a| a < 0 || a as usize >= lists) {
            return Err(format!("list {a} out of 0..{lists}"));
        }
        let (offsets, items) = bucket(assign, lists, 1);
        // The item vectors in list order, gathered straight into the lists' memory (an
        // index_select and then a copy out of it held the 10M-item matrix twice more, 2.5 GB
        // and 2 s of opening).
        let e = emb.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let b = bias
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let (ev, bv) = (f32_slice(&e), f32_slice(&b));
        let mut list_emb = Vec::with_capacity(n * d);
        let mut list_bias = Vec::with_capacity(n);
        for &i in &items {
            let j = i as usize - 1;
            list_emb.extend_from_slice(&ev[j * d..(j + 1) * d]);
            list_bias.push(bv[j]);
        }
        let probe = match params.probe {
            0 => auto_probe(lists, n),
            p => p.min(lists),
        };
        Ok(IvfIndex {
            centroids,
            lists: Lists {
                dim: d,
                offsets,
                items,
                emb: list_emb,
                bias: list_bias,
            },
            probe,
            threads: params.threads.max(1),
        })
    }

    /// Saves the centroids and each item's list (safetensors), with 16 sampled item vectors that
    /// [`IvfIndex::open`] compares with the weights it is opened for.
    pub fn save(&self, path: &Path, emb: &Tensor, bias: &Tensor) -> Result<(), String> {
        let li = &self.lists;
        let n = li.items.len();
        let mut assign = vec![0i64; n];
        for l in 0..self.lists() {
            for pos in li.offsets[l]..li.offsets[l + 1] {
                assign[li.items[pos] as usize - 1] = l as i64;
            }
        }
        let check = check_vectors(emb, bias);
        Tensor::write_safetensors(
            &[
                ("centroids", &self.centroids),
                ("assign", &Tensor::from_slice(&assign)),
                ("check", &check),
            ],
            path,
        )
        .map_err(|e| e.to_string())
    }

    /// Opens a saved index for this item matrix: same item count and dimensions, and the sampled
    /// item vectors equal to the weights' (an index of an earlier training is refused).
    pub fn open(
        path: &Path,
        emb: &Tensor,
        bias: &Tensor,
        params: IvfParams,
    ) -> Result<IvfIndex, String> {
        let named = Tensor::read_safetensors(path).map_err(|e| format!("cannot read: {e}"))?;
        let get = |name: &str| {
            named
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| format!("no tensor {name:?}: not an IVF index of `seqserve index`"))
        };
        let (centroids, assign, check) = (get("centroids")?, get("assign")?, get("check")?);
        let (n, d) = emb.size2().map_err(|e| e.to_string())?;
        let shape_ok = centroids.dim() == 2
            && centroids.size()[1] == d + 1
            && centroids.size()[0] >= 1
            && assign.size() == [n]
            && check.size() == [check_rows(n as usize).size()[0], d + 1]
            && centroids.kind() == Kind::Float
            && assign.kind() == Kind::Int64;
        if !shape_ok {
            return Err(format!(
                "index shapes centroids {:?}, assign {:?} do not fit a model of {n} items of {d} \
                 dimensions: rebuild it with `seqserve index --kind ivf`",
                centroids.size(),
                assign.size()
            ));
        }
        if !check_vectors(emb, bias).equal(&check.to_kind(Kind::Float)) {
            return Err(
                "the index was built for other weights (an earlier training?): rebuild it \
                        with `seqserve index --kind ivf`"
                    .into(),
            );
        }
        let assign = Vec::<i64>::try_from(assign).map_err(|e| e.to_string())?;
        IvfIndex::from_assignment(emb, bias, centroids.contiguous(), &assign, params)
    }

    pub fn lists(&self) -> usize {
        self.lists.offsets.len() - 1
    }

    pub fn probe(&self) -> usize {
        self.probe
    }

    pub fn len(&self) -> usize {
        self.lists.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.items.is_empty()
    }

    /// Bytes held: the item vectors in list order, biases, ids and centroids.
    pub fn bytes(&self) -> usize {
        let li = &self.lists;
        4 * (li.emb.len() + li.bias.len() + li.items.len())
            + 4 * self.centroids.numel()
            + 8 * li.offsets.len()
    }

    /// Ranks each row: rows with their own candidates, and rows the probed lists could not fill
    /// with k eligible items, are ranked by the exact routine (`fallback`).
    pub fn retrieve(
        &self,
        z: &Tensor,
        emb: &Tensor,
        bias: &Tensor,
        specs: &[RankSpec],
        fallback: exact::Strategy,
    ) -> Vec<Vec<(usize, f32)>> {
        let d = self.lists.dim;
        let rows: Vec<usize> = (0..specs.len())
            .filter(|&r| specs[r].k > 0 && specs[r].candidates.is_none())
            .collect();
        let mut out: Vec<Vec<(usize, f32)>> = vec![Vec::new(); specs.len()];
        let mut exact_rows: Vec<usize> = (0..specs.len())
            .filter(|&r| specs[r].k > 0 && specs[r].candidates.is_some())
            .collect();
        if !rows.is_empty() {
            let zc = z.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let zr = zc.index_select(
                0,
                &Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()),
            );
            let zv = f32_vec(&zr);
            let lists = self.probed_lists(&zr);
            let excl: Vec<Vec<usize>> = rows
                .iter()
                .map(|&r| exact::sorted_exclusions(&specs[r]))
                .collect();
            let ks: Vec<usize> = rows.iter().map(|&r| specs[r].k).collect();
            let tops = self.lists.scan(self.threads, &zv, &lists, &ks, &excl);
            let n = self.len();
            for (i, top) in tops.into_iter().enumerate() {
                let eligible = n - excl[i].iter().filter(|&&j| (1..=n).contains(&j)).count();
                if top.len() < ks[i].min(eligible) {
                    exact_rows.push(rows[i]);
                } else {
                    out[rows[i]] = top;
                }
            }
            debug_assert_eq!(zv.len(), rows.len() * d);
        }
        if !exact_rows.is_empty() {
            let sub: Vec<RankSpec> = exact_rows.iter().map(|&r| specs[r].clone()).collect();
            let idx = Tensor::from_slice(&exact_rows.iter().map(|&r| r as i64).collect::<Vec<_>>())
                .to_device(z.device());
            let lists = exact::retrieve(fallback, &z.index_select(0, &idx), emb, bias, &sub);
            for (r, list) in exact_rows.into_iter().zip(lists) {
                out[r] = list;
            }
        }
        out
    }

    /// For each query row (B, d), the `probe` lists whose centroids score best, as (list, row)
    /// pairs sorted by list: each list is then read once for all its rows.
    fn probed_lists(&self, z: &Tensor) -> Vec<(u32, u32)> {
        let b = z.size()[0];
        let q = Tensor::cat(
            &[
                z.shallow_clone(),
                Tensor::ones([b, 1], (Kind::Float, Device::Cpu)),
            ],
            1,
        );
        let scores = q.matmul(&self.centroids.tr());
        let (_, top) = scores.topk(self.probe as i64, 1, true, false);
        let top = Vec::<i64>::try_from(top.contiguous().view(-1)).expect("list ids");
        let mut pairs: Vec<(u32, u32)> = top
            .iter()
            .enumerate()
            .map(|(i, &l)| (l as u32, (i / self.probe) as u32))
            .collect();
        pairs.sort_unstable();
        pairs
    }
}

impl Lists {
    /// Reads each probed list once for all its rows, split over the threads by work (items × rows).
    fn scan(
        &self,
        threads: usize,
        z: &[f32],
        pairs: &[(u32, u32)],
        ks: &[usize],
        excl: &[Vec<usize>],
    ) -> Vec<Vec<(usize, f32)>> {
        // Groups: (list, range of pairs).
        let mut groups: Vec<(usize, usize, usize)> = Vec::new();
        let mut at = 0;
        while at < pairs.len() {
            let l = pairs[at].0;
            let mut end = at;
            while end < pairs.len() && pairs[end].0 == l {
                end += 1;
            }
            groups.push((l as usize, at, end));
            at = end;
        }
        let work =
            |&(l, a, b): &(usize, usize, usize)| (self.offsets[l + 1] - self.offsets[l]) * (b - a);
        let total: usize = groups.iter().map(work).sum();
        let t = threads.clamp(1, groups.len().max(1));
        let mut parts: Vec<&[(usize, usize, usize)]> = Vec::with_capacity(t);
        let (mut start, mut acc) = (0, 0);
        for (i, g) in groups.iter().enumerate() {
            acc += work(g);
            if parts.len() + 1 < t && acc * t >= total * (parts.len() + 1) {
                parts.push(&groups[start..=i]);
                start = i + 1;
            }
        }
        parts.push(&groups[start..]);
        let run = |part: &[(usize, usize, usize)]| -> Vec<TopK> {
            let mut tops: Vec<TopK> = ks.iter().map(|&k| TopK::new(k)).collect();
            let mut rows = Vec::new();
            for &(l, a, b) in part {
                rows.clear();
                rows.extend(pairs[a..b].iter().map(|&(_, r)| r as usize));
                self.scan_list(l, &rows, z, &mut tops, excl);
            }
            tops
        };
        let mut each = if parts.len() == 1 {
            vec![run(parts[0])]
        } else {
            in_parallel(parts, run)
        };
        let mut merged = each.remove(0);
        for other in each {
            for (m, o) in merged.iter_mut().zip(other) {
                m.absorb(o);
            }
        }
        merged.into_iter().map(TopK::into_vec).collect()
    }

    /// Scores every item of list `l` against `rows`, each item vector read once for all of them.
    fn scan_list(
        &self,
        l: usize,
        rows: &[usize],
        z: &[f32],
        tops: &mut [TopK],
        excl: &[Vec<usize>],
    ) {
        let (lo, hi) = (self.offsets[l], self.offsets[l + 1]);
        let list = List {
            dim: self.dim,
            emb: &self.emb[lo * self.dim..hi * self.dim],
            bias: &self.bias[lo..hi],
            items: &self.items[lo..hi],
        };
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("fma") {
                // SAFETY: the CPU has AVX-512F and FMA (checked just above).
                return unsafe { scan_avx512(&list, rows, z, tops, excl) };
            }
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                return unsafe { scan_avx2(&list, rows, z, tops, excl) };
            }
        }
        scan_body::<false>(&list, rows, z, tops, excl)
    }
}

/// One list's items, in list order.
struct List<'a> {
    dim: usize,
    emb: &'a [f32],
    bias: &'a [f32],
    items: &'a [u32],
}

// The same loop compiled for the wider vector units (the build targets a baseline x86-64, so the
// compiler may only use them inside functions that enable them; chosen at run time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn scan_avx512(l: &List, rows: &[usize], z: &[f32], tops: &mut [TopK], excl: &[Vec<usize>]) {
    scan_body::<true>(l, rows, z, tops, excl)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_avx2(l: &List, rows: &[usize], z: &[f32], tops: &mut [TopK], excl: &[Vec<usize>]) {
    scan_body::<true>(l, rows, z, tops, excl)
}

/// FUSED: multiply-adds as FMA instructions (only where the CPU has them: elsewhere `mul_add`
/// is a library call).
#[inline(always)]
fn scan_body<const FUSED: bool>(
    l: &List,
    rows: &[usize],
    z: &[f32],
    tops: &mut [TopK],
    excl: &[Vec<usize>],
) {
    let d = l.dim;
    for (pos, e) in l.emb.chunks_exact(d).enumerate() {
        let (item, b) = (l.items[pos] as usize, l.bias[pos]);
        for &r in rows {
            let s = dot::<FUSED>(&z[r * d..(r + 1) * d], e) + b;
            let top = &mut tops[r];
            if let Some((ti, ts)) = top.threshold() {
                if !(s > ts || (s == ts && item < ti)) {
                    continue;
                }
            }
            if excl[r].binary_search(&item).is_ok() {
                continue;
            }
            top.offer(item, s);
        }
    }
}

/// The [e, b] rows of [`check_rows`]: what a saved index keeps to recognise its weights.
fn check_vectors(emb: &Tensor, bias: &Tensor) -> Tensor {
    let rows = check_rows(emb.size()[0] as usize);
    augmented(&emb.index_select(0, &rows), &bias.index_select(0, &rows))
}

/// The 16 rows (at most n) whose vectors a saved index keeps to recognise its weights.
fn check_rows(n: usize) -> Tensor {
    let picks: Vec<i64> = (0..16u64.min(n as u64))
        .map(|i| ((i * 2_654_435_761) % n as u64) as i64)
        .collect();
    Tensor::from_slice(&picks)
}

/// z·e with 16 independent partial sums, so the compiler can vectorise it, added up as a tree
/// (a left-to-right sum of the lanes would be 15 dependent additions).
#[inline(always)]
fn dot<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = if FUSED {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = acc[i] + acc[i + 8];
    }
    let mut q = [0f32; 4];
    for i in 0..4 {
        q[i] = h[i] + h[i + 4];
    }
    let mut s = (q[0] + q[2]) + (q[1] + q[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows clustered around `k` random centres in `d` dimensions (a trained model's item vectors
    /// are clustered too; isotropic noise would be the hardest case), from a fixed seed.
    fn clustered(n: usize, k: usize, d: usize, spread: f64) -> Tensor {
        let mut rng = Mix(7);
        let mut unit = move || (rng.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let centres: Vec<f32> = (0..k * d).map(|_| (4.0 * unit()) as f32).collect();
        let mut v = Vec::with_capacity(n * d);
        for i in 0..n {
            let c = (i * 7919) % k;
            v.extend((0..d).map(|j| centres[c * d + j] + (spread * unit()) as f32));
        }
        Tensor::from_slice(&v).view([n as i64, d as i64])
    }

    #[test]
    fn grouped_assignment_mostly_finds_the_nearest_centroid_whatever_the_threads() {
        for (spread, want) in [(1.0, 0.95), (8.0, 0.0)] {
            let x = clustered(20_000, 300, 17, spread);
            let c = x.index_select(
                0,
                &Tensor::from_slice(&sample_indices(20_000, 2_500, &mut Mix(3))),
            );
            let exact = nearest(&x, &c, 2);
            let grouped = nearest_grouped(&x, &c, 2);
            assert_eq!(
                grouped,
                nearest_grouped(&x, &c, 1),
                "threads change the answer"
            );
            let same = exact.iter().zip(&grouped).filter(|(a, b)| a == b).count();
            let share = same as f64 / exact.len() as f64;
            eprintln!("spread {spread}: {share:.4} of rows in their nearest list");
            assert!(share >= want, "spread {spread}: {share}");
        }
    }
}
