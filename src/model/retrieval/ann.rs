//! Approximate retrieval: an HNSW index (usearch) over the item vectors, for catalogues where
//! scoring every item per request is too slow.
//!
//! Scores are z·e + b, a maximum-inner-product search: items are indexed as x = [e, b] and queried
//! with q = [z, 1], under usearch's inner-product metric, so q·x is exactly the model's score. The
//! usual reduction to nearest-neighbour search (x = [e, b, √(M² − |x|²)], L2) is exact in theory, but
//! HNSW graphs built on it navigate worse (ip-NSW, Morozov & Babenko, NeurIPS 2018); measured here on
//! beauty-2l's items at 100k: recall@10 0.79 / 0.87 against 0.67 / 0.81 at expansion 128 / 256. The
//! index only proposes candidates: each is re-scored exactly against the item matrix and ranked with
//! `rank::TopK`, so every returned score is the exact one and the tie policy holds among the proposed
//! items. A row whose exclusions leave fewer than k proposals falls back to the exact scan.
//!
//! Why usearch: one well-kept C++ header library (Unum; used inside ClickHouse and DuckDB) with
//! filtered search (exclusions are applied inside the graph walk, not after it), a single-file
//! format that can be memory-mapped (`view`: start-up does not read or copy the index), multi-threaded
//! construction, and f16/i8 storage. hnsw_rs was the alternative: pure Rust, but no filtered search
//! over a memory-mapped index and slower construction on this machine's two cores.
use super::super::RankSpec;
use super::exact;
use std::collections::HashSet;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// File name of a saved index inside a model directory.
pub const INDEX_FILE: &str = "items.usearch";

/// How the index is built and searched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnnParams {
    /// HNSW graph degree (M).
    pub connectivity: usize,
    /// Candidate list size while building (efConstruction).
    pub expansion_add: usize,
    /// Candidate list size while searching (ef): recall against speed.
    pub expansion_search: usize,
    /// Each search asks the index for at least this many items (re-scored exactly, best k kept).
    pub min_candidates: usize,
}

impl Default for AnnParams {
    fn default() -> Self {
        AnnParams {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            min_candidates: 32,
        }
    }
}

pub struct AnnIndex {
    index: Index,
    params: AnnParams,
    dims: usize,
}

/// The indexed item vectors [e, b] (n, d + 1), row j = item index j + 1, as a flat row-major buffer.
fn item_vectors(emb: &Tensor, bias: &Tensor) -> (Vec<f32>, usize) {
    let both = Tensor::cat(&[emb.shallow_clone(), bias.unsqueeze(1)], 1)
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let dims = both.size()[1] as usize;
    (
        Vec::<f32>::try_from(both.view(-1)).expect("float item vectors"),
        dims,
    )
}

fn options(dims: usize, p: &AnnParams) -> IndexOptions {
    IndexOptions {
        dimensions: dims,
        metric: MetricKind::IP,
        quantization: ScalarKind::F32,
        connectivity: p.connectivity,
        expansion_add: p.expansion_add,
        expansion_search: p.expansion_search,
        multi: false,
    }
}

impl AnnIndex {
    /// Builds the index over the item matrix with `threads` threads.
    pub fn build(
        emb: &Tensor,
        bias: &Tensor,
        params: AnnParams,
        threads: usize,
    ) -> Result<AnnIndex, String> {
        let (vectors, dims) = item_vectors(emb, bias);
        let n = vectors.len() / dims;
        let index = Index::new(&options(dims, &params)).map_err(|e| e.to_string())?;
        let threads = threads.max(1);
        index
            .reserve_capacity_and_threads(n, threads)
            .map_err(|e| e.to_string())?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::Mutex::new(None::<String>);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if let Err(e) = index.add(i as u64 + 1, &vectors[i * dims..(i + 1) * dims]) {
                        *failed.lock().expect("not poisoned") = Some(e.to_string());
                        break;
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().expect("not poisoned") {
            return Err(format!("building the index: {e}"));
        }
        Ok(AnnIndex {
            index,
            params,
            dims,
        })
    }

    /// Opens a saved index memory-mapped, checking it belongs to this item matrix: same size and
    /// dimensions, and a sample of stored vectors equal to the rows [e, b] of `emb`/`bias` (a
    /// stale index from an earlier training of the same directory is refused).
    pub fn open(
        path: &Path,
        emb: &Tensor,
        bias: &Tensor,
        params: AnnParams,
    ) -> Result<AnnIndex, String> {
        let p = path.to_str().ok_or("index path is not UTF-8")?;
        let index = Index::restore_view(p).map_err(|e| format!("cannot open: {e}"))?;
        let (n, d) = emb.size2().map_err(|e| e.to_string())?;
        let dims = d as usize + 1;
        if index.dimensions() != dims || index.size() != n as usize {
            return Err(format!(
                "index holds {} vectors of {} dimensions; the model has {} items of {} (+1): \
                 rebuild it with `seqserve index`",
                index.size(),
                index.dimensions(),
                n,
                d
            ));
        }
        index.change_expansion_search(params.expansion_search);
        let ann = AnnIndex {
            index,
            params,
            dims,
        };
        ann.check_sample(emb, bias)?;
        Ok(ann)
    }

    fn check_sample(&self, emb: &Tensor, bias: &Tensor) -> Result<(), String> {
        let n = emb.size()[0] as usize;
        let picks: Vec<i64> = (0..16u64)
            .map(|i| ((i * 2_654_435_761) % n as u64) as i64)
            .collect();
        let idx = Tensor::from_slice(&picks).to_device(emb.device());
        let (want, dims) = item_vectors(&emb.index_select(0, &idx), &bias.index_select(0, &idx));
        let mut got = vec![0f32; self.dims];
        for (j, &item) in picks.iter().enumerate() {
            let found = self
                .index
                .get(item as u64 + 1, &mut got)
                .map_err(|e| e.to_string())?;
            let w = &want[j * dims..(j + 1) * dims];
            if found != 1 || w.iter().zip(&got).any(|(a, b)| a != b) {
                return Err(format!(
                    "item {} in the index differs from the model's weights (an index of an \
                     earlier model?): rebuild it with `seqserve index`",
                    item + 1
                ));
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let p = path.to_str().ok_or("index path is not UTF-8")?;
        self.index.save(p).map_err(|e| e.to_string())
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ranks each query: the index proposes max(k, min_candidates) items not excluded, they are
    /// re-scored exactly; a row left with fewer than k proposals is scanned exactly.
    pub fn retrieve(
        &self,
        z: &Tensor,
        emb: &Tensor,
        bias: &Tensor,
        specs: &[RankSpec],
        fallback: exact::Strategy,
    ) -> Vec<Vec<(usize, f32)>> {
        let n = emb.size()[0] as usize;
        let zc = z.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let d = self.dims - 1;
        let zv = Vec::<f32>::try_from(zc.view(-1)).expect("float queries");
        // Each row becomes what the exact routine ranks: the index's proposals as candidates
        // (re-scored exactly, as one gather on the model's device); rows with their own candidates,
        // and rows the index could not fill, keep their spec and are ranked exactly.
        let mut q = vec![0f32; self.dims];
        let ranked_specs: Vec<RankSpec> = specs
            .iter()
            .enumerate()
            .map(|(r, s)| {
                if s.k == 0 || s.candidates.is_some() {
                    return s.clone();
                }
                q[..d].copy_from_slice(&zv[r * d..(r + 1) * d]);
                q[d] = 1.0;
                let want = s.k.max(self.params.min_candidates).min(n);
                let excluded: HashSet<u64> = s.exclude.iter().map(|&i| i as u64).collect();
                let found = if excluded.is_empty() {
                    self.index.search(&q, want)
                } else {
                    self.index
                        .filtered_search(&q, want, |key| !excluded.contains(&key))
                };
                let eligible = n.saturating_sub(excluded.len().min(n));
                match found {
                    Ok(m) if m.keys.len() >= s.k.min(eligible) => RankSpec {
                        k: s.k,
                        exclude: Vec::new(),
                        candidates: Some(m.keys.iter().map(|&k| k as usize).collect()),
                    },
                    _ => s.clone(),
                }
            })
            .collect();
        exact::retrieve(fallback, z, emb, bias, &ranked_specs)
    }
}
