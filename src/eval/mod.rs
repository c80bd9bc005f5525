//! Evaluation: labelled cases → ranked through the same model path as serving → per-case metrics.
pub mod metrics;
mod runner;
pub mod stats;

pub use metrics::{at_k, AtK};
pub use runner::{evaluate_cases, summary_map, EvalCase, EvalOptions, EvalResult};
