//! Where a metric is computed. Per-case values at one cutoff K, from a ranked list and a relevant set.
//!
//! Definitions (binary relevance, the same as the `ranx` package, which the tests check against):
//! * hits@K = |top-K ∩ relevant|; P@K = hits / K (K fixed even if fewer items were ranked);
//!   R@K = hits / |relevant|; F1@K = 2PR / (P + R), 0 when P + R = 0;
//! * HR@K = 1 if hits > 0; MRR@K = 1 / rank of the first relevant item within K, else 0;
//! * AP@K = Σ_{relevant at rank i ≤ K} P@i / |relevant|;
//! * NDCG@K = DCG@K / IDCG@K with gain 1 and discount 1/log2(rank + 1); IDCG over min(|relevant|, K).
//!
//! Relevant items are deduplicated by the caller; a case with no relevant item scores 0 everywhere
//! (callers count and report such cases rather than averaging them in silently).
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AtK {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub hr: f64,
    pub ndcg: f64,
    pub mrr: f64,
    pub ap: f64,
}

pub const METRIC_NAMES: [&str; 7] = ["precision", "recall", "f1", "hr", "ndcg", "mrr", "map"];

impl AtK {
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "precision" => self.precision,
            "recall" => self.recall,
            "f1" => self.f1,
            "hr" => self.hr,
            "ndcg" => self.ndcg,
            "mrr" => self.mrr,
            "map" | "ap" => self.ap,
            _ => return None,
        })
    }
}

/// Metrics of one case at cutoff `k`. `ranked` is best first (item ids), `relevant` has no repeats.
pub fn at_k<T: PartialEq>(ranked: &[T], relevant: &[T], k: usize) -> AtK {
    if relevant.is_empty() || k == 0 {
        return AtK::default();
    }
    let mut hits = 0usize;
    let mut dcg = 0.0;
    let mut first_hit = None;
    let mut ap_sum = 0.0;
    for (i, item) in ranked.iter().take(k).enumerate() {
        if relevant.contains(item) {
            hits += 1;
            dcg += 1.0 / ((i + 2) as f64).log2();
            first_hit.get_or_insert(i + 1);
            ap_sum += hits as f64 / (i + 1) as f64;
        }
    }
    let idcg: f64 = (0..relevant.len().min(k))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let precision = hits as f64 / k as f64;
    let recall = hits as f64 / relevant.len() as f64;
    let f1 = if hits == 0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    AtK {
        precision,
        recall,
        f1,
        hr: if hits > 0 { 1.0 } else { 0.0 },
        ndcg: dcg / idcg,
        mrr: first_hit.map_or(0.0, |r| 1.0 / r as f64),
        ap: ap_sum / relevant.len() as f64,
    }
}

/// Mean of each metric over cases.
pub fn mean(cases: &[AtK]) -> AtK {
    let n = cases.len().max(1) as f64;
    let mut m = AtK::default();
    for c in cases {
        m.precision += c.precision;
        m.recall += c.recall;
        m.f1 += c.f1;
        m.hr += c.hr;
        m.ndcg += c.ndcg;
        m.mrr += c.mrr;
        m.ap += c.ap;
    }
    AtK {
        precision: m.precision / n,
        recall: m.recall / n,
        f1: m.f1 / n,
        hr: m.hr / n,
        ndcg: m.ndcg / n,
        mrr: m.mrr / n,
        ap: m.ap / n,
    }
}

/// F1 of the mean precision and mean recall (the "macro P/R" reading of F1), reported beside the
/// primary mean-of-per-case F1 because papers use both.
pub fn f1_of_means(mean: &AtK) -> f64 {
    let (p, r) = (mean.precision, mean.recall);
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn hand_computed_case() {
        // ranked: 7 3 9 1 5; relevant {3, 5, 8}; K = 5
        let m = at_k(&[7, 3, 9, 1, 5], &[3, 5, 8], 5);
        close(m.precision, 2.0 / 5.0);
        close(m.recall, 2.0 / 3.0);
        close(m.f1, 2.0 * 0.4 * (2.0 / 3.0) / (0.4 + 2.0 / 3.0));
        close(m.hr, 1.0);
        close(m.mrr, 0.5);
        close(m.ap, (1.0 / 2.0 + 2.0 / 5.0) / 3.0);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 6f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        close(m.ndcg, dcg / idcg);
    }

    #[test]
    fn single_target_f1_is_function_of_hr() {
        // With one relevant item, F1@K = 2·HR/(K+1) (NOTES: why leave-one-out F1 adds nothing).
        let m = at_k(&[4, 2, 8], &[8], 10);
        close(m.f1, 2.0 * m.hr / 11.0);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(at_k::<u32>(&[1, 2], &[], 5), AtK::default());
        // K larger than the ranked list: precision still divides by K.
        let m = at_k(&[1, 2], &[1, 2], 5);
        close(m.precision, 0.4);
        close(m.recall, 1.0);
        close(m.ndcg, 1.0);
        // Perfect ranking.
        let m = at_k(&[1, 2, 3], &[1, 2, 3], 3);
        for v in [m.precision, m.recall, m.f1, m.hr, m.ndcg, m.mrr, m.ap] {
            close(v, 1.0);
        }
    }
}
