//! Telemetry: the Prometheus metrics (here) and the rate limiter of refusal logs (`log_limit`).
//!
//! Prometheus metrics: base units, `_total` counters, histograms, bounded labels only
//! (route, status, reason, model, version, device, metric, k; never user or item ids).
//! Per-model series carry `model` and `version` labels for loaded versions only: a version's
//! series are removed when it is unloaded (its worker exits), so the label set stays bounded.
pub mod log_limit;

/// Returns the allocator's free memory to the system. glibc's malloc keeps what was freed in its
/// per-thread arenas and returns it only from the top of the main heap: after a burst (a body
/// attack, a model unloaded) RSS stayed near its peak. `malloc_trim(0)` releases free pages in
/// every arena; it takes milliseconds and is called after an unload and periodically.
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes the allocator's own locks and has no preconditions.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::Mutex;

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_duration: HistogramVec,
    pub inference_duration: HistogramVec,
    pub batch_size: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub recommendations: IntCounterVec,
    pub model_info: GaugeVec,
    pub model_loads: IntCounterVec,
    pub unknown_items: IntCounter,
    pub rejected: IntCounterVec,
    pub eval_metric: GaugeVec,
    /// 1 while /health/ready would answer 200 (set at each scrape).
    pub ready: IntGauge,
    /// 1 while the history store answers (its last operation or ping succeeded).
    pub history_up: IntGauge,
    /// History store operation latency by operation (append, read, delete, ping).
    pub history_seconds: HistogramVec,
    /// History store failures by operation and kind (timeout, unavailable, protocol).
    pub history_errors: IntCounterVec,
    /// Requests served from their own history alone because the store failed.
    pub history_fallbacks: IntCounter,
    /// Users and bytes held by the memory store.
    pub history_users: IntGauge,
    pub history_bytes: IntGauge,
    /// The evaluation series set per (model, version, holdout), so a newer result (or an unload)
    /// replaces them instead of leaving stale ones beside it.
    eval_series: Mutex<HashMap<EvalKey, Vec<Vec<String>>>>,
    /// Workers bound to each (model, version): a version unloaded and loaded again before its old
    /// worker has drained has two, and its series must outlive the old one.
    version_refs: Mutex<HashMap<(String, String), usize>>,
}

/// (model, version, holdout).
type EvalKey = (String, String, String);

/// One model version's series, bound once for its worker (no label lookups per batch).
#[derive(Clone)]
pub struct VersionMetrics {
    pub labels: [String; 2],
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub recommendations: IntCounter,
}

/// Every reason a request is refused or dropped, counted once each. Pre-initialised so dashboards
/// see zeros rather than absent series.
pub const REFUSAL_REASONS: &[&str] = &[
    "invalid",
    "content_type",
    "too_large",
    "body_timeout",
    "queue_full",
    "parse_busy",
    "deadline",
    "client_gone",
    "not_ready",
    "evaluations_full",
    "body_budget",
    "history_unavailable",
];

/// The libtorch this build links (tch 0.26 binds exactly this version).
const LIBTORCH_VERSION: &str = "2.13.0";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.012, 0.016, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "seqserve_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )
        .unwrap();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "seqserve_request_duration_seconds",
                "HTTP request duration by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap();
        let mv = &["model", "version"];
        let queue_duration = HistogramVec::new(
            HistogramOpts::new(
                "seqserve_queue_duration_seconds",
                "Time a request waited in its model version's batching queue",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            mv,
        )
        .unwrap();
        let inference_duration = HistogramVec::new(
            HistogramOpts::new(
                "seqserve_inference_duration_seconds",
                "Model forward + ranking time per batch",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            mv,
        )
        .unwrap();
        let batch_size = HistogramVec::new(
            HistogramOpts::new("seqserve_batch_size", "Requests per model batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            mv,
        )
        .unwrap();
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "seqserve_queue_depth",
                "Requests waiting in a model version's batching queue",
            ),
            mv,
        )
        .unwrap();
        let recommendations = IntCounterVec::new(
            Opts::new(
                "seqserve_recommendations_total",
                "Recommendations answered, by the model version that answered (A/B arms)",
            ),
            mv,
        )
        .unwrap();
        let model_info = GaugeVec::new(
            Opts::new(
                "seqserve_model_info",
                "A loaded model version (value 1; 2 for the model's default version)",
            ),
            &["model", "version", "device"],
        )
        .unwrap();
        let model_loads = IntCounterVec::new(
            Opts::new(
                "seqserve_model_loads_total",
                "Model version loads by result (ok, failed)",
            ),
            &["result"],
        )
        .unwrap();
        let unknown_items = IntCounter::new(
            "seqserve_unknown_items_total",
            "History items not in the model's catalogue (ignored)",
        )
        .unwrap();
        let rejected = IntCounterVec::new(
            Opts::new(
                "seqserve_rejected_requests_total",
                "Requests refused or dropped, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let eval_metric = GaugeVec::new(
            Opts::new(
                "seqserve_evaluation_metric",
                "Last completed evaluation per model version and holdout (mean over cases); \
                 leakage=true when the holdout overlaps the model's training data",
            ),
            &["model", "version", "holdout", "metric", "k", "leakage"],
        )
        .unwrap();
        let ready = IntGauge::new(
            "seqserve_ready",
            "1 when the service is ready (models loaded and warm, not shutting down), else 0",
        )
        .unwrap();
        let build_info = GaugeVec::new(
            Opts::new(
                "seqserve_build_info",
                "The running build (value is always 1)",
            ),
            &["version", "commit", "libtorch"],
        )
        .unwrap();
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("SEQSERVE_COMMIT"),
                LIBTORCH_VERSION,
            ])
            .set(1.0);
        let history_up = IntGauge::new(
            "seqserve_history_store_up",
            "1 while the history store answers (its last operation or ping succeeded), else 0",
        )
        .unwrap();
        let history_seconds = HistogramVec::new(
            HistogramOpts::new(
                "seqserve_history_store_duration_seconds",
                "History store operation latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .unwrap();
        let history_errors = IntCounterVec::new(
            Opts::new(
                "seqserve_history_store_errors_total",
                "History store failures by operation and kind (timeout, unavailable, protocol)",
            ),
            &["op", "kind"],
        )
        .unwrap();
        let history_fallbacks = IntCounter::new(
            "seqserve_history_fallbacks_total",
            "Requests served from their own history alone because the history store failed",
        )
        .unwrap();
        let history_users = IntGauge::new(
            "seqserve_history_users",
            "Users whose history the memory store holds",
        )
        .unwrap();
        let history_bytes = IntGauge::new(
            "seqserve_history_bytes",
            "Bytes the memory store holds (an estimate of its allocations)",
        )
        .unwrap();
        for op in ["append", "read", "delete", "ping"] {
            history_seconds.with_label_values(&[op]);
            for kind in ["timeout", "unavailable", "protocol"] {
                history_errors.with_label_values(&[op, kind]);
            }
        }
        for r in REFUSAL_REASONS {
            rejected.with_label_values(&[r]);
        }
        for r in ["ok", "failed"] {
            model_loads.with_label_values(&[r]);
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(queue_duration.clone()),
            Box::new(inference_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(recommendations.clone()),
            Box::new(model_info.clone()),
            Box::new(model_loads.clone()),
            Box::new(unknown_items.clone()),
            Box::new(rejected.clone()),
            Box::new(eval_metric.clone()),
            Box::new(ready.clone()),
            Box::new(history_up.clone()),
            Box::new(history_seconds.clone()),
            Box::new(history_errors.clone()),
            Box::new(history_fallbacks.clone()),
            Box::new(history_users.clone()),
            Box::new(history_bytes.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric registers once");
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        Metrics {
            registry,
            requests,
            request_duration,
            queue_duration,
            inference_duration,
            batch_size,
            queue_depth,
            recommendations,
            model_info,
            model_loads,
            unknown_items,
            rejected,
            eval_metric,
            ready,
            history_up,
            history_seconds,
            history_errors,
            history_fallbacks,
            history_users,
            history_bytes,
            eval_series: Mutex::new(HashMap::new()),
            version_refs: Mutex::new(HashMap::new()),
        }
    }

    /// Binds a loaded version's series (they appear at once, at zero). Pair with
    /// [`Metrics::release_version`] when the worker exits.
    pub fn for_version(&self, model: &str, version: &str) -> VersionMetrics {
        *self
            .version_refs
            .lock()
            .expect("version refs lock")
            .entry((model.to_string(), version.to_string()))
            .or_default() += 1;
        let l = [model, version];
        VersionMetrics {
            labels: [model.to_string(), version.to_string()],
            queue_duration: self.queue_duration.with_label_values(&l),
            inference_duration: self.inference_duration.with_label_values(&l),
            batch_size: self.batch_size.with_label_values(&l),
            queue_depth: self.queue_depth.with_label_values(&l),
            recommendations: self.recommendations.with_label_values(&l),
        }
    }

    /// A worker of this version has exited: when it was the last, every series of the version
    /// goes, evaluations included.
    pub fn release_version(&self, model: &str, version: &str) {
        {
            let mut refs = self.version_refs.lock().expect("version refs lock");
            let key = (model.to_string(), version.to_string());
            let n = refs.entry(key.clone()).or_default();
            *n = n.saturating_sub(1);
            if *n > 0 {
                return;
            }
            refs.remove(&key);
        }
        let l = [model, version];
        let _ = self.queue_duration.remove_label_values(&l);
        let _ = self.inference_duration.remove_label_values(&l);
        let _ = self.batch_size.remove_label_values(&l);
        let _ = self.queue_depth.remove_label_values(&l);
        let _ = self.recommendations.remove_label_values(&l);
        let mut series = self.eval_series.lock().expect("eval series lock");
        series.retain(|(m, v, _), sets| {
            let gone = m == model && v == version;
            if gone {
                self.remove_eval_series(sets);
            }
            !gone
        });
    }

    fn remove_eval_series(&self, sets: &[Vec<String>]) {
        for s in sets {
            let refs: Vec<&str> = s.iter().map(String::as_str).collect();
            let _ = self.eval_metric.remove_label_values(&refs);
        }
    }

    /// Publishes a completed evaluation of one version on one holdout, replacing what an earlier
    /// one published for the same triple. `values` are (metric, k, mean).
    pub fn set_evaluation(
        &self,
        model: &str,
        version: &str,
        holdout: &str,
        leakage: &str,
        values: &[(&str, usize, f64)],
    ) {
        let key = (model.to_string(), version.to_string(), holdout.to_string());
        let mut series = self.eval_series.lock().expect("eval series lock");
        if let Some(old) = series.remove(&key) {
            self.remove_eval_series(&old);
        }
        let mut set = Vec::with_capacity(values.len());
        for (metric, k, v) in values {
            let labels = vec![
                model.to_string(),
                version.to_string(),
                holdout.to_string(),
                metric.to_string(),
                k.to_string(),
                leakage.to_string(),
            ];
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.eval_metric.with_label_values(&refs).set(*v);
            set.push(labels);
        }
        series.insert(key, set);
    }

    /// Counts one refused request. `reason` must be one of [`REFUSAL_REASONS`] (bounded labels).
    pub fn refuse(&self, reason: &'static str) {
        debug_assert!(REFUSAL_REASONS.contains(&reason), "unknown reason {reason}");
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_keeps_its_series_until_its_last_worker_exits() {
        let m = Metrics::new();
        let old = m.for_version("a", "1");
        old.recommendations.inc();
        m.set_evaluation("a", "1", "h.jsonl", "false", &[("hr", 10, 0.5)]);
        // Unloaded, then loaded again before the old worker drained: two workers bound.
        let _new = m.for_version("a", "1");
        m.release_version("a", "1");
        let text = m.render();
        assert!(text.contains("seqserve_recommendations_total{model=\"a\",version=\"1\"} 1"));
        assert!(text.contains("holdout=\"h.jsonl\""));
        m.release_version("a", "1");
        let text = m.render();
        assert!(!text.contains("version=\"1\""), "{text}");
        // A newer evaluation replaces the older one's series (here: its leakage label).
        m.for_version("b", "2");
        m.set_evaluation("b", "2", "h", "unchecked", &[("hr", 10, 0.1)]);
        m.set_evaluation("b", "2", "h", "true", &[("hr", 10, 0.2)]);
        let text = m.render();
        assert!(!text.contains("leakage=\"unchecked\""), "{text}");
        assert!(text.contains("leakage=\"true\""));
    }
}
