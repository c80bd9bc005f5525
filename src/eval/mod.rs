//! Evaluation: labelled holdout → ranked through the same model path as serving → per-case metrics →
//! confidence intervals and paired significance tests.
pub mod curves;
pub mod holdout;
pub mod html;
pub mod leakage;
pub mod metrics;
pub mod report;
mod runner;
pub mod stats;

pub use metrics::{at_k, AtK};
pub use runner::{
    evaluate_cases, evaluate_with, summary_map, unique_cut_offs, EvalCase, EvalOptions, EvalResult,
    Ranker,
};
