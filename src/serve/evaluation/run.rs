//! Running one evaluation on a blocking thread: each batch goes through its model's worker on the
//! low-priority queue (live requests always go first), then the report, the paired comparisons
//! and the published gauges.
use super::error::EvalError;
use super::jobs::EvalJob;
use crate::eval::holdout::{Provenance, Resolved};
use crate::eval::leakage::{self, LeakageCheck};
use crate::eval::metrics::METRIC_NAMES;
use crate::eval::report::{self, Report};
use crate::eval::{evaluate_with, EvalOptions, EvalResult};
use crate::model::{Query, RankSpec};
use crate::serve::infer::queue::BackgroundJob;
use crate::serve::registry::Served;
use crate::serve::telemetry::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

/// One evaluated version with its resolved cases and leakage verdict.
pub type Target = (Arc<Served>, Resolved, LeakageCheck);

/// The leakage guard for one model: refused unless `allow`; allowed results are marked.
pub fn leakage_check(
    served: &Served,
    provenance: Option<&Provenance>,
    allow: bool,
) -> Result<LeakageCheck, EvalError> {
    let mut check = leakage::check(&served.manifest, provenance);
    if check.is_leakage() {
        if !allow {
            return Err(EvalError::Leakage(format!(
                "{} (send \"allow_leakage\": true to evaluate anyway; the result is marked)",
                check.message
            )));
        }
        check.allowed = true;
        tracing::warn!(model = %served.name, version = %served.version, "{}", check.message);
    }
    Ok(check)
}

/// Ranks every target's cases, then builds the report. Gauges are published only once every
/// model is done: a cancelled evaluation (None) leaves nothing behind, and a completed one
/// replaces what an earlier one published for the same model, version and holdout.
pub fn run_evaluation(
    metrics: &Metrics,
    job: &EvalJob,
    targets: &[Target],
    opts: &EvalOptions,
    source: &str,
) -> Option<Result<serde_json::Value, String>> {
    let mut results: Vec<EvalResult> = Vec::with_capacity(targets.len());
    for (i, (served, resolved, _)) in targets.iter().enumerate() {
        let queue = served.queue.clone();
        let mut rank = |q: &[&Query], s: &[RankSpec]| -> Option<Vec<Vec<(usize, f32)>>> {
            if job.is_cancelled() {
                return None;
            }
            let (tx, rx) = oneshot::channel();
            queue
                .submit_background(BackgroundJob {
                    enqueued: std::time::Instant::now(),
                    queries: q.iter().map(|x| (*x).clone()).collect(),
                    specs: s.to_vec(),
                    reply: tx,
                })
                .ok()?;
            rx.blocking_recv().ok()
        };
        let offset = i * resolved.cases.len();
        let r = evaluate_with(
            &mut rank,
            served.catalogue.len(),
            &resolved.cases,
            opts,
            |d| job.done.store(offset + d, Ordering::SeqCst),
        )?;
        results.push(r);
    }
    // Two versions of one model are told apart by their version.
    let names: Vec<String> = targets
        .iter()
        .map(|(s, _, _)| {
            if targets.iter().filter(|(o, _, _)| o.name == s.name).count() > 1 {
                format!("{}:{}", s.name, s.version)
            } else {
                s.name.clone()
            }
        })
        .collect();
    let comparisons = match report::compare(&names, &results) {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let mut models = Vec::with_capacity(targets.len());
    for ((served, resolved, check), r) in targets.iter().zip(&results) {
        let mut values = Vec::new();
        for (j, k) in r.ks.iter().enumerate() {
            for metric in METRIC_NAMES {
                values.push((metric, *k, r.mean[j].get(metric).unwrap_or(0.0)));
            }
        }
        metrics.set_evaluation(
            &served.name,
            &served.version,
            source,
            check.label(),
            &values,
        );
        let mut m =
            report::model_report(&served.name, &served.version, r, resolved.unknown_relevant);
        m.leakage = Some(check.clone());
        models.push(m);
    }
    let cases = targets.first().map_or(0, |t| t.1.cases.len());
    let rep = Report::new(source, cases, opts, models, comparisons);
    Some(serde_json::to_value(&rep).map_err(|e| e.to_string()))
}
