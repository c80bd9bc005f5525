//! Statistics over per-case metric values (one `f64` per evaluated user/case).
//!
//! Used to attach confidence intervals to aggregate metrics and to answer
//! "is model A's F1@10 better than model B's on the *same* users?" with paired
//! significance tests. Everything here is deterministic for a given seed so
//! that evaluation reports are reproducible.
//!
//! Conventions:
//! * Distribution functions come from `statrs`; resampling uses
//!   `ChaCha8Rng::seed_from_u64(seed)`.
//! * Non-finite results are avoided on degenerate (but valid) input; see the
//!   individual functions for the exact conventions chosen.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Bootstrap resamples used for [`PairedTest::diff_ci`].
pub const PAIRED_BOOTSTRAP_RESAMPLES: usize = 1_000;
/// Confidence level used for [`PairedTest::diff_ci`].
pub const PAIRED_CI_LEVEL: f64 = 0.95;
/// Sign-flip permutations used for [`PairedTest::randomization_p_value`].
pub const PAIRED_RANDOMIZATION_RESAMPLES: usize = 10_000;

/// A confidence interval for a mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConfidenceInterval {
    /// The sample mean (point estimate).
    pub mean: f64,
    /// Lower bound of the interval.
    pub lower: f64,
    /// Upper bound of the interval.
    pub upper: f64,
    /// Confidence level actually used, e.g. 0.95.
    pub level: f64,
}

/// Percentile bootstrap confidence interval of the mean.
///
/// Draws `resamples` resamples of `values` with replacement (each of size
/// `values.len()`) using a `ChaCha8Rng` seeded with `seed`, and returns the
/// `(1 - level) / 2` and `(1 + level) / 2` quantiles of the resampled means.
/// Quantiles use linear interpolation between order statistics (NumPy's
/// default `"linear"` method).
///
/// Conventions (chosen so that reports never contain NaN for finite input;
/// NaN *values* are not filtered and propagate into the mean and bounds):
/// * empty `values` -> `mean`, `lower`, `upper` are all `0.0`;
/// * `resamples == 0` -> `lower == upper == mean`;
/// * `level` is clamped to `[0, 1]` (NaN is treated as 0, i.e. a degenerate
///   interval at the bootstrap median); the clamped value is reported.
pub fn bootstrap_ci(values: &[f64], level: f64, resamples: usize, seed: u64) -> ConfidenceInterval {
    let level = if level.is_nan() {
        0.0
    } else {
        level.clamp(0.0, 1.0)
    };
    let n = values.len();
    if n == 0 {
        return ConfidenceInterval {
            mean: 0.0,
            lower: 0.0,
            upper: 0.0,
            level,
        };
    }
    let mean = mean(values);
    if resamples == 0 {
        return ConfidenceInterval {
            mean,
            lower: mean,
            upper: mean,
            level,
        };
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: f64 = (0..n).map(|_| values[rng.random_range(0..n)]).sum();
            sum / n as f64
        })
        .collect();
    means.sort_unstable_by(f64::total_cmp);

    let tail = (1.0 - level) / 2.0;
    ConfidenceInterval {
        mean,
        lower: quantile_sorted(&means, tail),
        upper: quantile_sorted(&means, 1.0 - tail),
        level,
    }
}

/// Result of comparing two models on the same cases (`a[i]` and `b[i]` belong
/// to the same user/case).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PairedTest {
    /// Number of pairs.
    pub n: usize,
    /// Mean of `a`.
    pub mean_a: f64,
    /// Mean of `b`.
    pub mean_b: f64,
    /// Mean of the differences `a - b` (positive: A scores higher).
    pub mean_diff: f64,
    /// Percentile bootstrap CI of the mean difference
    /// ([`PAIRED_CI_LEVEL`], [`PAIRED_BOOTSTRAP_RESAMPLES`] resamples, the
    /// seed passed to [`compare_paired`]).
    pub diff_ci: ConfidenceInterval,
    /// Paired t statistic, `mean(d) / (sd(d) / sqrt(n))`.
    ///
    /// When every difference is identical (`sd == 0`): `0.0` if they are all
    /// zero, otherwise `f64::INFINITY` with the sign of the difference (note
    /// that `serde_json` serialises infinities as `null`).
    #[schema(value_type = Option<f64>)]
    pub t_statistic: f64,
    /// Two-sided p-value of the paired t-test (Student t, `df = n - 1`).
    /// `1.0` when all differences are zero, `0.0` when they are an identical
    /// non-zero constant.
    pub t_p_value: f64,
    /// Wilcoxon signed-rank statistic `min(W+, W-)` (as SciPy reports it for
    /// a two-sided test); `0.0` when every difference is zero.
    pub wilcoxon_statistic: f64,
    /// Two-sided Wilcoxon signed-rank p-value: zero differences dropped,
    /// average ranks for ties, normal approximation with tie and continuity
    /// correction. Matches `scipy.stats.wilcoxon(a, b, zero_method="wilcox",
    /// correction=True, method="approx")`, except that it is `1.0` (SciPy:
    /// NaN) when every difference is zero.
    pub wilcoxon_p_value: f64,
    /// Two-sided paired randomization (sign-flip) test on the mean difference
    /// with [`PAIRED_RANDOMIZATION_RESAMPLES`] random sign assignments; see
    /// [`sign_flip_p_value`].
    pub randomization_p_value: f64,
    /// Effect size for paired data (Cohen's d_z): `mean_diff / sd(diff)` with
    /// the sample sd (`n - 1`); `0.0` when `sd == 0` (by convention, even for
    /// a constant non-zero difference, to keep it finite).
    pub cohens_d: f64,
}

/// Paired comparison of per-case metric values of model A (`a`) and model B
/// (`b`) on the same cases, in the same order.
///
/// Returns `Err` when the lengths differ, when there are fewer than two pairs,
/// or when any value is not finite (a NaN/inf metric value is a bug upstream
/// and would silently poison every statistic).
///
/// `seed` makes the bootstrap CI and the randomization test reproducible;
/// the two use independent ChaCha streams derived from it.
pub fn compare_paired(a: &[f64], b: &[f64], seed: u64) -> Result<PairedTest, String> {
    if a.len() != b.len() {
        return Err(format!(
            "paired comparison needs equal lengths, got {} and {}",
            a.len(),
            b.len()
        ));
    }
    let n = a.len();
    if n < 2 {
        return Err(format!("paired comparison needs at least 2 pairs, got {n}"));
    }
    if let Some(i) = a
        .iter()
        .zip(b)
        .position(|(x, y)| !x.is_finite() || !y.is_finite())
    {
        return Err(format!(
            "paired comparison needs finite values, pair {i} is ({}, {})",
            a[i], b[i]
        ));
    }

    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean_diff = mean(&diffs);
    let sd = sample_sd(&diffs, mean_diff);

    let (t_statistic, t_p_value) = paired_t(mean_diff, sd, n);
    let (wilcoxon_statistic, wilcoxon_p_value) = wilcoxon_signed_rank(&diffs);
    let cohens_d = if sd > 0.0 { mean_diff / sd } else { 0.0 };

    Ok(PairedTest {
        n,
        mean_a: mean(a),
        mean_b: mean(b),
        mean_diff,
        diff_ci: bootstrap_ci(&diffs, PAIRED_CI_LEVEL, PAIRED_BOOTSTRAP_RESAMPLES, seed),
        t_statistic,
        t_p_value,
        wilcoxon_statistic,
        wilcoxon_p_value,
        randomization_p_value: sign_flip_p_value(&diffs, PAIRED_RANDOMIZATION_RESAMPLES, seed),
        cohens_d,
    })
}

/// Two-sided paired randomization (sign-flip) test of "mean difference is 0".
///
/// Under the null hypothesis each difference is equally likely to have either
/// sign, so each of `resamples` permutations flips every sign independently
/// at random and the p-value is
/// `(count(|perm mean| >= |observed mean|) + 1) / (resamples + 1)`
/// (the `+ 1` counts the observed assignment, so p is never 0).
///
/// Sums are compared instead of means (same `n`, same ordering). Because a
/// sign pattern whose sum equals the observed one in exact arithmetic can
/// differ from it by rounding, a permuted sum counts as "at least as extreme"
/// when it is within `n * EPSILON * sum|d|` (a bound on the summation error)
/// below the observed one; without this an all-zero or perfectly symmetric
/// input could report a spuriously small p-value.
///
/// Deterministic for a `seed` (ChaCha8, stream 1, so it is independent of the
/// bootstrap stream used with the same seed). Returns `1.0` for empty input
/// or all-zero differences. Cost is `O(resamples * n)` with no allocation:
/// random signs are taken 64 at a time from one `u64`.
pub fn sign_flip_p_value(diffs: &[f64], resamples: usize, seed: u64) -> f64 {
    if diffs.is_empty() {
        return 1.0;
    }
    let observed = signed_sum(diffs, || 0).abs();
    let scale: f64 = diffs.iter().map(|d| d.abs()).sum();
    let threshold = observed - diffs.len() as f64 * f64::EPSILON * scale;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    let mut at_least_as_extreme = 0usize;
    for _ in 0..resamples {
        if signed_sum(diffs, || rng.next_u64()).abs() >= threshold {
            at_least_as_extreme += 1;
        }
    }
    (at_least_as_extreme + 1) as f64 / (resamples + 1) as f64
}

/// Holm–Bonferroni step-down adjustment.
///
/// With `m` p-values sorted ascending, `p_(i)` (0-based `i`) is adjusted to
/// `min(1, max_{j <= i} (m - j) * p_(j))`; the running maximum makes the
/// adjusted values monotone in the sorted order, as the step-down procedure
/// requires. Results are returned in the input order. Ties keep their input
/// order. A NaN input stays NaN in the output and does not influence the
/// others (it is sorted last but still counts towards `m`).
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    // total_cmp sorts (positive) NaN after every number; stable sort keeps ties in input order.
    order.sort_by(|&i, &j| p_values[i].total_cmp(&p_values[j]));

    let mut adjusted = vec![f64::NAN; m];
    let mut running_max = 0.0f64;
    for (rank, &idx) in order.iter().enumerate() {
        let p = p_values[idx];
        if p.is_nan() {
            continue;
        }
        running_max = running_max.max((m - rank) as f64 * p);
        adjusted[idx] = running_max.min(1.0);
    }
    adjusted
}

/// Arithmetic mean; callers guarantee a non-empty slice.
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (`n - 1` denominator), two-pass for accuracy.
fn sample_sd(values: &[f64], mean: f64) -> f64 {
    let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
    (ss / (values.len() - 1) as f64).sqrt()
}

/// Paired t-test from the differences' mean and sample sd; returns
/// `(t, two-sided p)`. Degenerate `sd == 0` handled as documented on
/// [`PairedTest::t_statistic`].
fn paired_t(mean_diff: f64, sd: f64, n: usize) -> (f64, f64) {
    if sd == 0.0 {
        return if mean_diff == 0.0 {
            (0.0, 1.0)
        } else {
            (f64::INFINITY.copysign(mean_diff), 0.0)
        };
    }
    let t = mean_diff / (sd * sd / n as f64).sqrt();
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .expect("df >= 1 and unit scale are valid Student t parameters");
    // sf(|t|) rather than 1 - cdf(|t|): keeps precision for small p-values.
    let p = (2.0 * dist.sf(t.abs())).min(1.0);
    (t, p)
}

/// Wilcoxon signed-rank test, two-sided; returns `(min(W+, W-), p)`.
///
/// Mirrors SciPy's asymptotic path: zeros dropped ("wilcox"), average ranks
/// of `|d|` for ties (exact float equality, as SciPy), variance
/// `(n(n+1)(2n+1) - sum(t^3 - t) / 2) / 24` over tie groups of size `t`, and
/// continuity correction `z = (W+ - n(n+1)/4 - sign * 0.5) / se`.
fn wilcoxon_signed_rank(diffs: &[f64]) -> (f64, f64) {
    let mut nonzero: Vec<f64> = diffs.iter().copied().filter(|&d| d != 0.0).collect();
    let n = nonzero.len();
    if n == 0 {
        return (0.0, 1.0);
    }
    nonzero.sort_unstable_by(|x, y| x.abs().total_cmp(&y.abs()));

    let mut w_plus = 0.0;
    let mut w_minus = 0.0;
    let mut tie_term = 0.0;
    let mut start = 0;
    while start < n {
        let magnitude = nonzero[start].abs();
        let end = start + nonzero[start..].partition_point(|d| d.abs() == magnitude);
        // Ranks start..end (0-based) share the average 1-based rank.
        let avg_rank = (start + 1 + end) as f64 / 2.0;
        for &d in &nonzero[start..end] {
            if d > 0.0 {
                w_plus += avg_rank;
            } else {
                w_minus += avg_rank;
            }
        }
        let t = (end - start) as f64;
        tie_term += t * t * t - t;
        start = end;
    }

    let nf = n as f64;
    let expected = nf * (nf + 1.0) * 0.25;
    // Always > 0 for n >= 1, even when all |d| are tied.
    let se = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - tie_term / 2.0) / 24.0).sqrt();
    let mut z = (w_plus - expected) / se;
    // Continuity correction towards zero; sign(0) = 0 leaves z = 0 (p = 1).
    let sign = if z > 0.0 {
        1.0
    } else if z < 0.0 {
        -1.0
    } else {
        0.0
    };
    z -= sign * 0.5 / se;
    let normal = Normal::standard();
    let p = (2.0 * normal.sf(z.abs())).min(1.0);
    (w_plus.min(w_minus), p)
}

/// Linear-interpolation quantile of an ascending, non-empty slice.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    if lo == hi {
        sorted[lo]
    } else {
        sorted[lo] + (sorted[hi] - sorted[lo]) * frac
    }
}

/// Sum of `diffs` with signs flipped according to the bits of `next_bits()`
/// (one `u64` per 64 elements; bit set = flip). Four accumulators break the
/// floating-point add dependency chain, which matters for 10k × 20k sums.
/// Sign flipping is done on the sign bit, so it is exact and branch-free.
fn signed_sum(diffs: &[f64], mut next_bits: impl FnMut() -> u64) -> f64 {
    let mut acc = [0.0f64; 4];
    for chunk in diffs.chunks(64) {
        let bits = next_bits();
        for (j, &d) in chunk.iter().enumerate() {
            let flip = ((bits >> j) & 1) << 63;
            acc[j & 3] += f64::from_bits(d.to_bits() ^ flip);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= tol,
            "{what}: got {actual:.17}, expected {expected:.17} (tol {tol:e})"
        );
    }

    /// Deterministic pseudo-random values in [lo, hi) for test fixtures.
    fn uniform(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    // ---- Reference values from SciPy 1.17.1 / NumPy 2.4.6 -------------------
    // For each (a, b):
    //   d = a - b
    //   scipy.stats.ttest_rel(a, b)                       -> t, p
    //   scipy.stats.wilcoxon(a, b, zero_method='wilcox',
    //                        correction=True, method='approx') -> W, p
    //   d.mean(), d.mean() / d.std(ddof=1)                -> mean_diff, d_z

    #[test]
    fn matches_scipy_f1_like_values() {
        // One exact zero difference (0.45 - 0.45) and float-noisy near-ties.
        let a = [0.2, 0.35, 0.1, 0.5, 0.45, 0.3, 0.25, 0.6, 0.15, 0.4];
        let b = [0.18, 0.3, 0.12, 0.41, 0.45, 0.22, 0.27, 0.52, 0.1, 0.33];
        let r = compare_paired(&a, &b, 1).unwrap();
        assert_eq!(r.n, 10);
        assert_close(r.t_statistic, 2.9999999999999996, 1e-9, "t");
        assert_close(r.t_p_value, 0.014956363910414222, 1e-9, "t p");
        assert_close(r.wilcoxon_statistic, 3.5, 1e-6, "W");
        assert_close(r.wilcoxon_p_value, 0.028124450117384896, 1e-6, "W p");
        assert_close(r.mean_diff, 0.039999999999999994, 1e-12, "mean diff");
        assert_close(r.cohens_d, 0.9486832980505138, 1e-9, "d");
    }

    #[test]
    fn matches_scipy_with_ties_and_zeros() {
        // d = [1, 0, 1, -1, 2, 0, 2, 1, -0.5, 0, 1, 2]: three zeros dropped,
        // tie groups of size 5 (|d| = 1) and 3 (|d| = 2).
        let a = [3.0, 2.5, 4.0, 1.0, 5.0, 2.0, 3.5, 6.0, 2.0, 4.5, 1.5, 3.0];
        let b = [2.0, 2.5, 3.0, 2.0, 3.0, 2.0, 1.5, 5.0, 2.5, 4.5, 0.5, 1.0];
        let r = compare_paired(&a, &b, 1).unwrap();
        assert_close(r.t_statistic, 2.428571428571429, 1e-9, "t");
        assert_close(r.t_p_value, 0.03349437815559434, 1e-9, "t p");
        assert_close(r.wilcoxon_statistic, 5.0, 1e-6, "W");
        assert_close(r.wilcoxon_p_value, 0.039611870360315014, 1e-6, "W p");
        assert_close(r.mean_diff, 0.7083333333333334, 1e-12, "mean diff");
        assert_close(r.cohens_d, 0.7010681840159743, 1e-9, "d");
    }

    #[test]
    fn matches_scipy_when_b_is_better() {
        // rng = np.random.default_rng(7)
        // a = np.round(rng.uniform(0, 1, 25), 1)
        // b = np.round(np.clip(a + rng.normal(0.08, 0.15, 25), 0, 1), 1)
        let a = [
            0.6, 0.9, 0.8, 0.2, 0.3, 0.9, 0.0, 0.8, 0.8, 0.5, 0.3, 0.3, 0.3, 0.4, 0.5, 0.6, 1.0,
            0.8, 0.6, 1.0, 0.2, 0.2, 0.6, 0.0, 0.0,
        ];
        let b = [
            0.7, 0.6, 0.8, 0.3, 0.4, 0.8, 0.0, 0.7, 0.8, 0.7, 0.3, 0.4, 0.5, 0.4, 0.6, 0.7, 1.0,
            0.7, 0.7, 1.0, 0.0, 0.4, 0.7, 0.0, 0.4,
        ];
        let r = compare_paired(&a, &b, 1).unwrap();
        assert_close(r.t_statistic, -1.4142135623730945, 1e-9, "t");
        assert_close(r.t_p_value, 0.17014155327370226, 1e-9, "t p");
        assert_close(r.wilcoxon_statistic, 55.0, 1e-6, "W");
        assert_close(r.wilcoxon_p_value, 0.31593489260656793, 1e-6, "W p");
        assert_close(r.mean_diff, -0.03999999999999999, 1e-12, "mean diff");
        assert_close(r.cohens_d, -0.28284271247461884, 1e-9, "d");
        // Swapping the models mirrors the two-sided results.
        let s = compare_paired(&b, &a, 1).unwrap();
        assert_close(s.t_statistic, -r.t_statistic, 1e-12, "swapped t");
        assert_close(s.t_p_value, r.t_p_value, 1e-12, "swapped t p");
        assert_close(
            s.wilcoxon_statistic,
            r.wilcoxon_statistic,
            1e-12,
            "swapped W",
        );
        assert_close(s.wilcoxon_p_value, r.wilcoxon_p_value, 1e-12, "swapped W p");
    }

    // ---- Bootstrap ----------------------------------------------------------

    #[test]
    fn bootstrap_contains_mean_and_is_deterministic() {
        let values = uniform(200, 0.0, 1.0, 42);
        let ci = bootstrap_ci(&values, 0.95, 1000, 7);
        assert_close(ci.mean, mean(&values), 1e-15, "mean");
        assert!(ci.lower < ci.mean && ci.mean < ci.upper, "{ci:?}");
        assert_eq!(ci.level, 0.95);
        // Same seed -> identical interval; another seed -> (almost surely) not.
        assert_eq!(ci, bootstrap_ci(&values, 0.95, 1000, 7));
        assert_ne!(ci, bootstrap_ci(&values, 0.95, 1000, 8));
        // Higher level -> wider interval.
        let wide = bootstrap_ci(&values, 0.99, 1000, 7);
        assert!(
            wide.lower < ci.lower && wide.upper > ci.upper,
            "{wide:?} vs {ci:?}"
        );
        // The mean of 200 values is close to normal, so the percentile interval
        // should be close to mean +- 1.96 * sd / sqrt(n) (a 90% interval would
        // be ~16% narrower, a 99% one ~31% wider; across seeds the ratio
        // varies by about +-5% with 1000 resamples).
        let sd = sample_sd(&values, ci.mean);
        let normal_width = 2.0 * 1.959964 * sd / (values.len() as f64).sqrt();
        let ratio = (ci.upper - ci.lower) / normal_width;
        assert!((0.88..1.12).contains(&ratio), "width ratio {ratio}");
    }

    #[test]
    fn bootstrap_narrows_with_more_data() {
        let small = bootstrap_ci(&uniform(50, 0.0, 1.0, 1), 0.95, 1000, 3);
        let large = bootstrap_ci(&uniform(5000, 0.0, 1.0, 1), 0.95, 1000, 3);
        let (ws, wl) = (small.upper - small.lower, large.upper - large.lower);
        // Width scales like 1/sqrt(n): expect ~10x narrower.
        assert!(wl < ws / 5.0, "small {ws}, large {wl}");
    }

    #[test]
    fn bootstrap_edge_cases() {
        let empty = bootstrap_ci(&[], 0.95, 1000, 1);
        assert_eq!((empty.mean, empty.lower, empty.upper), (0.0, 0.0, 0.0));
        let constant = bootstrap_ci(&[0.25; 10], 0.95, 500, 1);
        assert_eq!((constant.lower, constant.upper), (0.25, 0.25));
        let single = bootstrap_ci(&[0.7], 0.95, 100, 1);
        assert_eq!((single.mean, single.lower, single.upper), (0.7, 0.7, 0.7));
        let none = bootstrap_ci(&[1.0, 2.0], 0.95, 0, 1);
        assert_eq!((none.lower, none.upper), (1.5, 1.5));
        let clamped = bootstrap_ci(&[1.0, 2.0, 4.0], 1.5, 100, 1);
        assert_eq!(clamped.level, 1.0);
        assert_eq!((clamped.lower, clamped.upper), (1.0, 4.0));
    }

    #[test]
    fn quantile_interpolates_linearly() {
        let s = [0.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(quantile_sorted(&s, 0.0), 0.0);
        assert_eq!(quantile_sorted(&s, 1.0), 40.0);
        assert_close(quantile_sorted(&s, 0.3), 12.0, 1e-12, "q0.3");
    }

    // ---- Randomization test ------------------------------------------------

    #[test]
    fn randomization_detects_clear_shift() {
        let b = uniform(60, 0.0, 0.5, 11);
        let noise = uniform(60, -0.05, 0.05, 12);
        let a: Vec<f64> = b.iter().zip(&noise).map(|(x, e)| x + 0.1 + e).collect();
        let r = compare_paired(&a, &b, 5).unwrap();
        assert!(r.randomization_p_value < 0.01, "{r:?}");
        // Every permutation is less extreme: p hits its floor 1 / (R + 1).
        assert_close(r.randomization_p_value, 1.0 / 10_001.0, 1e-15, "floor");
        assert!(r.t_p_value < 0.01 && r.wilcoxon_p_value < 0.01, "{r:?}");
        assert!(r.diff_ci.lower > 0.0, "{:?}", r.diff_ci);
        assert!(r.cohens_d > 1.0, "{r:?}");
    }

    #[test]
    fn randomization_large_for_noise() {
        let a = uniform(80, 0.0, 1.0, 21);
        let noise = uniform(80, -0.2, 0.2, 22);
        let b: Vec<f64> = a.iter().zip(&noise).map(|(x, e)| x + e).collect();
        let r = compare_paired(&a, &b, 9).unwrap();
        assert!(r.randomization_p_value > 0.2, "{r:?}");
        // The sign-flip test approximates the t-test for well-behaved data.
        assert!(
            (r.randomization_p_value - r.t_p_value).abs() < 0.05,
            "{r:?}"
        );
        assert!(
            r.diff_ci.lower < 0.0 && r.diff_ci.upper > 0.0,
            "{:?}",
            r.diff_ci
        );
    }

    #[test]
    fn randomization_is_deterministic_and_exact_for_tiny_input() {
        let d = [0.3, -0.1, 0.2, 0.05];
        assert_eq!(
            sign_flip_p_value(&d, 2000, 3),
            sign_flip_p_value(&d, 2000, 3)
        );
        // 16 equally likely sign patterns; |sum| >= |0.45| for 6 of them
        // (|sum| = 0.45, 0.55, 0.65, each with its negation), so p ~ 6/16.
        let p = sign_flip_p_value(&d, 20_000, 4);
        assert!((p - 6.0 / 16.0).abs() < 0.02, "p = {p}");
    }

    #[test]
    fn randomization_tolerates_rounding_ties() {
        // Sums to exactly 0 in decimal, but the float sum is -5.55e-17 and 6 of
        // the 256 sign patterns round to a strictly smaller |sum|; every pattern
        // is as extreme as a zero observed mean, so p must be exactly 1.
        let d = [0.2, -0.4, 0.7, 0.3, -0.5, 0.2, -0.3, -0.2];
        assert!(signed_sum(&d, || 0) != 0.0);
        assert_eq!(sign_flip_p_value(&d, 5000, 1), 1.0);
    }

    /// Timing check; run with `cargo test --release -- --ignored`.
    #[test]
    #[ignore]
    fn randomization_is_fast_in_release() {
        let d = uniform(20_000, -1.0, 1.0, 99);
        let start = std::time::Instant::now();
        let p = sign_flip_p_value(&d, 10_000, 1);
        let elapsed = start.elapsed();
        eprintln!("10k sign flips over 20k pairs: {elapsed:?}, p = {p}");
        assert!(elapsed.as_secs_f64() < 1.0, "{elapsed:?}");
        let b = uniform(20_000, 0.0, 1.0, 98);
        let a: Vec<f64> = b.iter().zip(&d).map(|(x, e)| x + 0.01 * e).collect();
        let start = std::time::Instant::now();
        let r = compare_paired(&a, &b, 1).unwrap();
        let elapsed = start.elapsed();
        eprintln!("compare_paired over 20k pairs: {elapsed:?}, {r:?}");
        assert!(elapsed.as_secs_f64() < 2.0, "{elapsed:?}");
    }

    // ---- Holm ---------------------------------------------------------------

    #[test]
    fn holm_known_example() {
        // Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06.
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        let expected = [0.03, 0.06, 0.06, 0.02];
        assert_eq!(adj.len(), 4);
        for (got, want) in adj.iter().zip(expected) {
            assert_close(*got, want, 1e-12, "holm");
        }
    }

    #[test]
    fn holm_clips_and_handles_edges() {
        assert!(holm(&[]).is_empty());
        assert_eq!(holm(&[0.3]), vec![0.3]);
        let adj = holm(&[0.5, 0.2, 0.9]);
        // 0.2*3 = 0.6, 0.5*2 = 1.0, max(0.9, 1.0) -> 1.0 (clipped).
        assert_close(adj[1], 0.6, 1e-12, "smallest");
        assert_eq!(adj[0], 1.0);
        assert_eq!(adj[2], 1.0);
        let with_nan = holm(&[0.01, f64::NAN, 0.02]);
        assert!(with_nan[1].is_nan());
        assert_close(with_nan[0], 0.03, 1e-12, "nan m");
        assert_close(with_nan[2], 0.04, 1e-12, "nan second");
    }

    // ---- Edge cases ---------------------------------------------------------

    #[test]
    fn all_differences_zero() {
        let a = [0.1, 0.5, 0.3, 0.0, 0.9];
        let r = compare_paired(&a, &a, 1).unwrap();
        assert_eq!(r.mean_diff, 0.0);
        assert_eq!(r.t_statistic, 0.0);
        assert_eq!(r.t_p_value, 1.0);
        assert_eq!(r.wilcoxon_statistic, 0.0);
        assert_eq!(r.wilcoxon_p_value, 1.0);
        assert_eq!(r.randomization_p_value, 1.0);
        assert_eq!(r.cohens_d, 0.0);
        assert_eq!((r.diff_ci.lower, r.diff_ci.upper), (0.0, 0.0));
    }

    #[test]
    fn constant_nonzero_difference() {
        let b = [0.25, 0.5, 0.0, 1.0];
        let up: Vec<f64> = b.iter().map(|x| x + 0.5).collect();
        let r = compare_paired(&up, &b, 1).unwrap();
        assert_eq!(r.t_statistic, f64::INFINITY);
        assert_eq!(r.t_p_value, 0.0);
        assert_eq!(r.cohens_d, 0.0);
        assert_eq!(r.mean_diff, 0.5);
        // All |d| tied, all positive: W- = 0, se = sqrt((180 - 60/2) / 24) = 2.5,
        // z = (10 - 5 - 0.5) / 2.5 = 1.8, p = 2 * sf(1.8); reference from
        // scipy.stats.wilcoxon([0.75, 1.0, 0.5, 1.5], [0.25, 0.5, 0.0, 1.0], zero_method="wilcox", correction=True, method="approx").
        assert_eq!(r.wilcoxon_statistic, 0.0);
        assert_close(r.wilcoxon_p_value, 0.07186063822585158, 1e-6, "W p");
        // Only the all-positive and all-negative patterns reach |sum| = 2: p ~ 2/16.
        assert!((r.randomization_p_value - 0.125).abs() < 0.02, "{r:?}");
        let down = compare_paired(&b, &up, 1).unwrap();
        assert_eq!(down.t_statistic, f64::NEG_INFINITY);
        assert_eq!(down.t_p_value, 0.0);
        for x in [r, down] {
            for v in [
                x.mean_a,
                x.mean_b,
                x.diff_ci.lower,
                x.diff_ci.upper,
                x.wilcoxon_p_value,
            ] {
                assert!(v.is_finite(), "{x:?}");
            }
        }
    }

    #[test]
    fn invalid_input_is_an_error() {
        assert!(compare_paired(&[1.0], &[0.0], 1).is_err());
        assert!(compare_paired(&[], &[], 1).is_err());
        assert!(compare_paired(&[1.0, 2.0], &[0.0], 1).is_err());
        assert!(compare_paired(&[1.0, f64::NAN], &[0.0, 1.0], 1).is_err());
        assert!(compare_paired(&[1.0, 2.0], &[0.0, f64::INFINITY], 1).is_err());
        assert!(compare_paired(&[1.0, 2.0], &[0.0, 1.5], 1).is_ok());
    }

    #[test]
    fn paired_ci_matches_bootstrap_of_diffs() {
        let a = uniform(30, 0.0, 1.0, 31);
        let b = uniform(30, 0.0, 1.0, 32);
        let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let r = compare_paired(&a, &b, 77).unwrap();
        assert_eq!(r.diff_ci, bootstrap_ci(&diffs, 0.95, 1000, 77));
        assert_eq!(r, compare_paired(&a, &b, 77).unwrap());
    }
}
