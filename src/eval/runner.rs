//! Ranks evaluation cases through the model's `recommend` (the serving path) and scores them.
use super::metrics::{self, AtK};
use crate::model::{Model, Query, RankSpec};
use std::collections::{BTreeMap, HashSet};

/// One labelled case, already resolved against the model.
#[derive(Debug, Clone)]
pub struct EvalCase {
    pub query: Query,
    /// Known items of the history (masked when `mask_seen`).
    pub seen: Vec<usize>,
    /// Relevant item indices, deduplicated; may be empty (counted, scored 0).
    pub relevant: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub ks: Vec<usize>,
    /// Mask the user's history items from the ranking (on by default, as most papers do).
    pub mask_seen: bool,
    pub batch_size: usize,
}

/// The cut-offs as asked, each once, in the order given: a report keys its metrics by K, so a
/// K asked for twice would be two identical columns.
pub fn unique_cut_offs(ks: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(ks.len());
    for &k in ks {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            ks: vec![10],
            mask_seen: true,
            batch_size: 256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalResult {
    pub ks: Vec<usize>,
    /// per_case[c][j]: metrics of case c at ks[j].
    pub per_case: Vec<Vec<AtK>>,
    /// Per-k means over all cases.
    pub mean: Vec<AtK>,
    /// Per-k catalogue coverage: distinct items in any top-k list / catalogue size.
    pub coverage: Vec<f64>,
    /// Cases with no relevant item known to the model (scored 0, included in means).
    pub no_relevant: usize,
}

/// Ranks a batch: `Model::recommend` directly (CLI), or through the server's low-priority queue.
pub type Ranker<'a> = dyn FnMut(&[&Query], &[RankSpec]) -> Option<Vec<Vec<(usize, f32)>>> + 'a;

/// Scores every case with `model`; see [`evaluate_with`].
pub fn evaluate_cases(
    model: &Model,
    cases: &[EvalCase],
    opts: &EvalOptions,
    progress: impl FnMut(usize),
) -> EvalResult {
    let mut rank = |q: &[&Query], s: &[RankSpec]| Some(model.recommend(q, s));
    evaluate_with(&mut rank, model.catalogue.len(), cases, opts, progress)
        .expect("a direct ranker never cancels")
}

/// Scores every case in batches; `progress` gets the number of cases done. Returns None when the
/// ranker gives up (cancelled evaluation).
pub fn evaluate_with(
    rank: &mut Ranker<'_>,
    n_items: usize,
    cases: &[EvalCase],
    opts: &EvalOptions,
    mut progress: impl FnMut(usize),
) -> Option<EvalResult> {
    let k_max = opts.ks.iter().copied().max().unwrap_or(10);
    let mut per_case = Vec::with_capacity(cases.len());
    let mut covered: Vec<HashSet<usize>> = opts.ks.iter().map(|_| HashSet::new()).collect();
    let mut done = 0;
    for chunk in cases.chunks(opts.batch_size.max(1)) {
        let queries: Vec<&Query> = chunk.iter().map(|c| &c.query).collect();
        let specs: Vec<RankSpec> = chunk
            .iter()
            .map(|c| RankSpec {
                k: k_max,
                exclude: if opts.mask_seen {
                    c.seen.clone()
                } else {
                    Vec::new()
                },
                candidates: None,
            })
            .collect();
        let ranked = rank(&queries, &specs)?;
        for (case, list) in chunk.iter().zip(ranked) {
            let ids: Vec<usize> = list.into_iter().map(|(i, _)| i).collect();
            for (j, &k) in opts.ks.iter().enumerate() {
                covered[j].extend(ids.iter().take(k));
            }
            per_case.push(
                opts.ks
                    .iter()
                    .map(|&k| metrics::at_k(&ids, &case.relevant, k))
                    .collect::<Vec<_>>(),
            );
        }
        done += chunk.len();
        progress(done);
    }
    let mean = (0..opts.ks.len())
        .map(|j| metrics::mean(&per_case.iter().map(|c| c[j]).collect::<Vec<_>>()))
        .collect();
    Some(EvalResult {
        ks: opts.ks.clone(),
        per_case,
        mean,
        coverage: covered
            .iter()
            .map(|s| s.len() as f64 / n_items.max(1) as f64)
            .collect(),
        no_relevant: cases.iter().filter(|c| c.relevant.is_empty()).count(),
    })
}

/// `{"f1@10": .., "hr@10": .., ...}` for manifests and logs.
pub fn summary_map(r: &EvalResult) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (j, k) in r.ks.iter().enumerate() {
        for name in metrics::METRIC_NAMES {
            out.insert(format!("{name}@{k}"), r.mean[j].get(name).unwrap_or(0.0));
        }
        out.insert(format!("f1_of_means@{k}"), metrics::f1_of_means(&r.mean[j]));
        out.insert(format!("coverage@{k}"), r.coverage[j]);
    }
    out
}
