//! Ranks evaluation cases through `Model::recommend` (the serving path) and scores them.
use super::metrics::{self, AtK};
use crate::model::{Model, Query, RankSpec};
use std::collections::BTreeMap;

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
    pub mask_seen: bool,
    pub batch_size: usize,
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
    /// Cases with no relevant item known to the model (scored 0, included in means).
    pub no_relevant: usize,
}

/// Scores every case; `progress` is called with the number of cases done so far.
pub fn evaluate_cases(
    model: &Model,
    cases: &[EvalCase],
    opts: &EvalOptions,
    mut progress: impl FnMut(usize),
) -> EvalResult {
    let k_max = opts.ks.iter().copied().max().unwrap_or(10);
    let mut per_case = Vec::with_capacity(cases.len());
    for (done, chunk) in cases.chunks(opts.batch_size.max(1)).enumerate() {
        let queries: Vec<&Query> = chunk.iter().map(|c| &c.query).collect();
        let specs: Vec<RankSpec> = chunk
            .iter()
            .map(|c| RankSpec {
                k: k_max,
                exclude: if opts.mask_seen { c.seen.clone() } else { Vec::new() },
                candidates: None,
            })
            .collect();
        let ranked = model.recommend(&queries, &specs);
        for (case, list) in chunk.iter().zip(ranked) {
            let ids: Vec<usize> = list.into_iter().map(|(i, _)| i).collect();
            per_case.push(
                opts.ks
                    .iter()
                    .map(|&k| metrics::at_k(&ids, &case.relevant, k))
                    .collect::<Vec<_>>(),
            );
        }
        progress((done * opts.batch_size.max(1) + chunk.len()).min(cases.len()));
    }
    let mean = (0..opts.ks.len())
        .map(|j| metrics::mean(&per_case.iter().map(|c| c[j]).collect::<Vec<_>>()))
        .collect();
    EvalResult {
        ks: opts.ks.clone(),
        per_case,
        mean,
        no_relevant: cases.iter().filter(|c| c.relevant.is_empty()).count(),
    }
}

/// `{"f1@10": .., "hr@10": .., ...}` for manifests and logs.
pub fn summary_map(r: &EvalResult) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (j, k) in r.ks.iter().enumerate() {
        for name in metrics::METRIC_NAMES {
            out.insert(format!("{name}@{k}"), r.mean[j].get(name).unwrap_or(0.0));
        }
        out.insert(format!("f1_of_means@{k}"), metrics::f1_of_means(&r.mean[j]));
    }
    out
}
