//! Prometheus metrics: base units, `_total` counters, histograms, bounded labels only
//! (route, status, reason, model, version, device, metric, k; never user or item ids).
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub model_info: GaugeVec,
    pub unknown_items: IntCounter,
    pub rejected: IntCounterVec,
    pub eval_metric: GaugeVec,
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
];

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
        let queue_duration = Histogram::with_opts(
            HistogramOpts::new(
                "seqserve_queue_duration_seconds",
                "Time a request waited in the batching queue",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap();
        let inference_duration = Histogram::with_opts(
            HistogramOpts::new(
                "seqserve_inference_duration_seconds",
                "Model forward + ranking time per batch",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap();
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("seqserve_batch_size", "Requests per model batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .unwrap();
        let queue_depth = IntGauge::new(
            "seqserve_queue_depth",
            "Requests waiting in the batching queue",
        )
        .unwrap();
        let model_info = GaugeVec::new(
            Opts::new(
                "seqserve_model_info",
                "The loaded model (value is always 1)",
            ),
            &["model", "version", "device"],
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
                "Last evaluation result per model (mean over holdout cases)",
            ),
            &["model", "version", "metric", "k"],
        )
        .unwrap();
        for r in REFUSAL_REASONS {
            rejected.with_label_values(&[r]);
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(queue_duration.clone()),
            Box::new(inference_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(model_info.clone()),
            Box::new(unknown_items.clone()),
            Box::new(rejected.clone()),
            Box::new(eval_metric.clone()),
        ] {
            registry.register(c).expect("metric registers once");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            queue_duration,
            inference_duration,
            batch_size,
            queue_depth,
            model_info,
            unknown_items,
            rejected,
            eval_metric,
        }
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
