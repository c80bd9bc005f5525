//! Turning scores into a ranked list: the one ranking routine, shared by serving and evaluation and
//! by every retrieval strategy (`super::retrieval`), so they cannot disagree on order.
//!
//! Tie policy (deterministic, documented): higher score first; among equal scores the lower item
//! index (earlier line of items.txt) first. NaN scores are never returned. Excluded items never
//! appear, so fewer than k items come back when fewer than k are eligible.
use std::collections::HashSet;

/// The best `k` (item index, score) pairs seen so far, kept in ranking order.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    best: Vec<(usize, f32)>,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            best: Vec::with_capacity(k + 1),
        }
    }

    /// Whether the list holds k items already.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.best.len() >= self.k
    }

    /// The score an item must beat (ties go to the lower index) once the list is full.
    #[inline]
    pub fn threshold(&self) -> Option<(usize, f32)> {
        if self.is_full() {
            self.best.last().copied()
        } else {
            None
        }
    }

    /// Offers one item; order of offers does not matter.
    #[inline]
    pub fn offer(&mut self, idx: usize, s: f32) {
        if self.k == 0 || s.is_nan() {
            return;
        }
        if let Some((last_idx, last_s)) = self.threshold() {
            if !(s > last_s || (s == last_s && idx < last_idx)) {
                return;
            }
        }
        // Insert keeping (score desc, index asc) order.
        let pos = self
            .best
            .partition_point(|&(i, x)| x > s || (x == s && i < idx));
        self.best.insert(pos, (idx, s));
        self.best.truncate(self.k);
    }

    pub fn into_vec(self) -> Vec<(usize, f32)> {
        self.best
    }

    /// Offers every item of `other` (a list over other items, e.g. another range of the
    /// catalogue): the result is the best k of both.
    pub fn absorb(&mut self, other: TopK) {
        for (idx, s) in other.best {
            self.offer(idx, s);
        }
    }
}

/// Ranks `scores` (column j = item index j + 1) and returns the best `k` (item index, score).
///
/// `exclude` lists item indices that must not be returned; `candidates`, when given, restricts
/// the ranking to those item indices (re-ranking). Indices out of range are ignored.
pub fn top_k(
    scores: &[f32],
    k: usize,
    exclude: &[usize],
    candidates: Option<&[usize]>,
) -> Vec<(usize, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let n = scores.len();
    let mut best = TopK::new(k);
    let mut offer = |idx: usize, s: f32| best.offer(idx, s);
    match candidates {
        Some(cands) => {
            // Sets, not linear scans: candidates and exclusions are caller-sized (up to
            // limits.max_candidates / max_exclude each), and a quadratic loop here would stall the
            // model thread for every request in its batch.
            let excluded: HashSet<usize> = exclude.iter().copied().collect();
            let mut seen = HashSet::with_capacity(cands.len());
            for &idx in cands {
                if idx == 0 || idx > n || excluded.contains(&idx) || !seen.insert(idx) {
                    continue;
                }
                offer(idx, scores[idx - 1]);
            }
        }
        None => {
            if exclude.len() > 32 {
                // Long exclusion lists (long histories): a bitmap beats repeated linear scans.
                let mut mask = vec![false; n + 1];
                for &i in exclude {
                    if i <= n {
                        mask[i] = true;
                    }
                }
                for (j, &s) in scores.iter().enumerate() {
                    if !mask[j + 1] {
                        offer(j + 1, s);
                    }
                }
            } else {
                for (j, &s) in scores.iter().enumerate() {
                    if !exclude.contains(&(j + 1)) {
                        offer(j + 1, s);
                    }
                }
            }
        }
    }
    best.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_score_then_index() {
        let s = [0.5, 0.9, 0.5, 0.1, 0.9];
        assert_eq!(top_k(&s, 3, &[], None), vec![(2, 0.9), (5, 0.9), (1, 0.5)]);
        assert_eq!(top_k(&s, 10, &[], None).len(), 5);
        assert!(top_k(&s, 0, &[], None).is_empty());
    }

    #[test]
    fn exclusion_and_candidates() {
        let s = [0.5, 0.9, 0.5, 0.1, 0.9];
        assert_eq!(top_k(&s, 2, &[2, 5], None), vec![(1, 0.5), (3, 0.5)]);
        assert_eq!(
            top_k(&s, 5, &[3], Some(&[4, 3, 1, 4, 99, 0])),
            vec![(1, 0.5), (4, 0.1)]
        );
        // Long exclusion list path agrees with the short one.
        let s: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32).collect();
        let ex: Vec<usize> = (1..=40).collect();
        let long = top_k(&s, 7, &ex, None);
        let short: Vec<(usize, f32)> = {
            let mut all: Vec<(usize, f32)> = (41..=100).map(|i| (i, s[i - 1])).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(7);
            all
        };
        assert_eq!(long, short);
    }
}
