//! An evaluation report: per model, every metric at every K with a 95% bootstrap confidence interval;
//! between models, paired tests on the same cases with Holm-corrected p-values.
use super::metrics::{self, METRIC_NAMES};
use super::runner::EvalResult;
use super::stats::{self, ConfidenceInterval, PairedTest};
use serde::Serialize;
use std::collections::BTreeMap;

pub const TIE_POLICY: &str =
    "higher score first; equal scores ordered by item index (line of items.txt), lower first";
pub const F1_DEFINITION: &str = "f1 = mean over cases of per-case F1@K (primary); \
     f1_of_means = F1 of mean precision@K and mean recall@K";
const SEED: u64 = 2024;
const RESAMPLES: usize = 1000;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelReport {
    pub model: String,
    pub version: String,
    pub cases: usize,
    /// Cases whose relevant items are all unknown to the model (scored 0, kept in the means).
    pub cases_without_known_relevant: usize,
    /// Relevant ids unknown to the model (counted as misses).
    pub unknown_relevant_items: usize,
    /// "metric@k" → mean with its 95% bootstrap CI.
    pub metrics: BTreeMap<String, ConfidenceInterval>,
    /// "f1_of_means@k" and "coverage@k".
    pub aggregates: BTreeMap<String, f64>,
    /// Whether the holdout may overlap this model's training data (see `eval::leakage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leakage: Option<super::leakage::LeakageCheck>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub metric: String,
    pub test: PairedTest,
    /// Holm-adjusted p-values over all model pairs compared on this metric.
    pub holm_t_p_value: f64,
    pub holm_wilcoxon_p_value: f64,
    pub holm_randomization_p_value: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub holdout: String,
    pub cases: usize,
    pub ks: Vec<usize>,
    pub mask_seen: bool,
    pub ranking: String,
    /// How items were retrieved: always "exact" (every item scored); approximate retrieval
    /// (`retrieval.mode = "ann"`) serves live traffic only, so a report never mixes the two.
    pub retrieval: String,
    pub tie_policy: String,
    pub f1_definition: String,
    pub models: Vec<ModelReport>,
    pub comparisons: Vec<Comparison>,
}

impl Report {
    /// The one report header: what was ranked and how (full catalogue, exact retrieval, the tie
    /// policy, the F1 definition), for the CLI and the admin route alike.
    pub fn new(
        holdout: &str,
        cases: usize,
        opts: &crate::eval::EvalOptions,
        models: Vec<ModelReport>,
        comparisons: Vec<Comparison>,
    ) -> Report {
        Report {
            holdout: holdout.to_string(),
            cases,
            ks: opts.ks.clone(),
            mask_seen: opts.mask_seen,
            ranking: "full catalogue".into(),
            retrieval: crate::model::retrieval::Retrieval::Exact.name().into(),
            tie_policy: TIE_POLICY.into(),
            f1_definition: F1_DEFINITION.into(),
            models,
            comparisons,
        }
    }
}

/// Per-case values of one metric at one K.
pub fn column(r: &EvalResult, metric: &str, k_index: usize) -> Vec<f64> {
    r.per_case
        .iter()
        .map(|c| c[k_index].get(metric).unwrap_or(0.0))
        .collect()
}

pub fn model_report(
    name: &str,
    version: &str,
    r: &EvalResult,
    unknown_relevant_items: usize,
) -> ModelReport {
    let mut m = BTreeMap::new();
    let mut aggregates = BTreeMap::new();
    for (j, k) in r.ks.iter().enumerate() {
        for metric in METRIC_NAMES {
            let ci = stats::bootstrap_ci(&column(r, metric, j), 0.95, RESAMPLES, SEED);
            m.insert(format!("{metric}@{k}"), ci);
        }
        aggregates.insert(format!("f1_of_means@{k}"), metrics::f1_of_means(&r.mean[j]));
        aggregates.insert(format!("coverage@{k}"), r.coverage[j]);
    }
    ModelReport {
        model: name.to_string(),
        version: version.to_string(),
        cases: r.per_case.len(),
        cases_without_known_relevant: r.no_relevant,
        unknown_relevant_items,
        metrics: m,
        aggregates,
        leakage: None,
    }
}

/// Metrics compared between models (the "F1-Test" and its usual companions).
pub const COMPARED: [&str; 3] = ["f1", "ndcg", "hr"];

/// Paired comparisons of every pair of models on every compared metric@k; Holm over the pairs.
pub fn compare(names: &[String], results: &[EvalResult]) -> Result<Vec<Comparison>, String> {
    let mut out = Vec::new();
    let Some(first) = results.first() else {
        return Ok(out);
    };
    for (j, k) in first.ks.iter().enumerate() {
        for metric in COMPARED {
            let mut family = Vec::new();
            for a in 0..results.len() {
                for b in a + 1..results.len() {
                    let test = stats::compare_paired(
                        &column(&results[a], metric, j),
                        &column(&results[b], metric, j),
                        SEED,
                    )?;
                    family.push((a, b, test));
                }
            }
            let holm_t = stats::holm(&family.iter().map(|f| f.2.t_p_value).collect::<Vec<_>>());
            let holm_w = stats::holm(
                &family
                    .iter()
                    .map(|f| f.2.wilcoxon_p_value)
                    .collect::<Vec<_>>(),
            );
            let holm_r = stats::holm(
                &family
                    .iter()
                    .map(|f| f.2.randomization_p_value)
                    .collect::<Vec<_>>(),
            );
            for (i, (a, b, test)) in family.into_iter().enumerate() {
                out.push(Comparison {
                    a: names[a].clone(),
                    b: names[b].clone(),
                    metric: format!("{metric}@{k}"),
                    test,
                    holm_t_p_value: holm_t[i],
                    holm_wilcoxon_p_value: holm_w[i],
                    holm_randomization_p_value: holm_r[i],
                });
            }
        }
    }
    Ok(out)
}

/// A readable table of the report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "holdout {} — {} cases, full-catalogue ranking (exact retrieval), seen items {}; ties: {}",
        r.holdout,
        r.cases,
        if r.mask_seen { "masked" } else { "not masked" },
        TIE_POLICY
    );
    for m in &r.models {
        let _ = writeln!(
            s,
            "\n{} (version {}): {} cases, {} without a known relevant item, {} unknown relevant ids",
            m.model, m.version, m.cases, m.cases_without_known_relevant, m.unknown_relevant_items
        );
        if let Some(l) = m.leakage.as_ref().filter(|l| l.is_leakage()) {
            let _ = writeln!(s, "!!! {} !!!", l.message);
        }
        let _ = write!(s, "{:<12}", "metric");
        for k in &r.ks {
            let _ = write!(s, "{:>30}", format!("@{k} mean [95% CI]"));
        }
        let _ = writeln!(s);
        for metric in METRIC_NAMES {
            let _ = write!(s, "{metric:<12}");
            for k in &r.ks {
                let ci = m.metrics[&format!("{metric}@{k}")];
                let _ = write!(
                    s,
                    "{:>30}",
                    format!("{:.4} [{:.4}, {:.4}]", ci.mean, ci.lower, ci.upper)
                );
            }
            let _ = writeln!(s);
        }
        for agg in ["f1_of_means", "coverage"] {
            let _ = write!(s, "{agg:<12}");
            for k in &r.ks {
                let _ = write!(
                    s,
                    "{:>30}",
                    format!("{:.4}", m.aggregates[&format!("{agg}@{k}")])
                );
            }
            let _ = writeln!(s);
        }
    }
    if !r.comparisons.is_empty() {
        let _ = writeln!(
            s,
            "\npaired tests on the same cases (a − b; p two-sided; Holm over model pairs):"
        );
        let w = r
            .comparisons
            .iter()
            .map(|c| c.a.len() + c.b.len() + 6)
            .max()
            .unwrap_or(10);
        let _ = writeln!(
            s,
            "{:<w$}{:<10}{:>10}{:>22}{:>10}{:>10}{:>10}{:>10}{:>8}",
            "a vs b", "metric", "diff", "95% CI", "t p", "wilc. p", "rand. p", "Holm(w)", "d"
        );
        for c in &r.comparisons {
            let t = &c.test;
            let _ = writeln!(
                s,
                "{:<w$}{:<10}{:>10.5}{:>22}{:>10.2e}{:>10.2e}{:>10.2e}{:>10.2e}{:>8.3}",
                format!("{} vs {}", c.a, c.b),
                c.metric,
                t.mean_diff,
                format!("[{:.5}, {:.5}]", t.diff_ci.lower, t.diff_ci.upper),
                t.t_p_value,
                t.wilcoxon_p_value,
                t.randomization_p_value,
                c.holm_wilcoxon_p_value,
                t.cohens_d
            );
        }
    }
    s
}
