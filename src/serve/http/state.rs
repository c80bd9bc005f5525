//! What every handler shares: the configuration, and a handle on each part of the server.
use super::body_budget::BodyBudget;
use super::error::ApiError;
use super::parse_pool::ParsePool;
use super::throttle::Throttle;
use crate::serve::config::Config;
use crate::serve::evaluation::Evaluations;
use crate::serve::history::History;
use crate::serve::infer::Infer;
use crate::serve::lifecycle::Lifecycle;
use crate::serve::registry::Registry;
use crate::serve::telemetry::log_limit::LogLimit;
use crate::serve::telemetry::Metrics;
use std::sync::Arc;

pub struct AppState {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    /// Every loaded model version; handlers ask it which one answers.
    pub registry: Registry,
    /// The way to the model workers.
    pub infer: Infer,
    /// Users' stored histories (`POST /events`; `/recommend` with `"user"`).
    pub history: History,
    pub evaluations: Arc<Evaluations>,
    pub lifecycle: Lifecycle,
    /// Where large bodies are parsed and validated, off the async threads.
    pub parse_pool: ParsePool,
    /// How many large inference requests may be in flight (adaptive).
    pub throttle: Arc<Throttle>,
    /// Request-body bytes buffered at once (server.max_buffered_body_bytes).
    pub body_budget: Arc<BodyBudget>,
    pub refusal_log: LogLimit,
}

impl AppState {
    /// Ready for traffic: started, not shutting down, and the default model can answer.
    pub fn is_ready(&self) -> bool {
        self.lifecycle.serving().is_ok() && self.registry.can_serve_default()
    }

    /// The one guard of new work: 503 while starting or shutting down (counted as a refusal).
    pub fn serving(&self) -> Result<(), ApiError> {
        self.lifecycle.serving().map_err(|e| {
            self.metrics.refuse("not_ready");
            ApiError::from(e)
        })
    }
}
