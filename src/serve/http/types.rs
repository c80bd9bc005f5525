//! The wire types of POST /recommend and /recommend/batch: what the JSON bodies read and write
//! (serde) and how the OpenAPI document describes them (`ToSchema`).
use crate::model::{ContextValue, HistoryEntry, ItemId, ObjectOnly};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    /// The model (or A/B split) to ask; absent: model.default.
    pub model: Option<String>,
    /// A loaded version of `model` (bypasses any split); absent: the model's default version.
    pub version: Option<String>,
    /// The user: the key of their stored history (their events come before `history`'s; see
    /// POST /events) and of sticky A/B assignment (hashed; absent: a split assigns at random).
    /// Never logged or exported as a metric label.
    #[schema(max_length = 256)]
    pub user: Option<String>,
    /// Item ids or {item, behavior} objects, most recent last. May be empty (cold start).
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    #[serde(default, deserialize_with = "crate::model::unique_context")]
    pub context: BTreeMap<String, ContextValue>,
    /// How many items to return (default 10; at most limits.max_k).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::model::optional_integer")]
    pub k: Option<usize>,
    #[serde(default = "yes")]
    pub exclude_seen: bool,
    /// Rank only these items (re-ranking).
    pub candidates: Option<Vec<ItemId>>,
    /// Never return these items.
    #[serde(default)]
    pub exclude: Vec<ItemId>,
    /// Overrides server.request_timeout_ms for this request (at most 600000, as that setting).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::model::optional_integer")]
    pub timeout_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[schema(value_type = Vec<RecommendRequest>)]
    pub requests: Vec<ObjectOnly<RecommendRequest>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ScoredItem {
    pub item: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Timing {
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RecommendResponse {
    /// The model and version that answered.
    pub model: String,
    pub version: String,
    /// The A/B split that chose them, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// "exact" or "ann": how the items were retrieved.
    pub retrieval: String,
    pub items: Vec<ScoredItem>,
    /// History ids not in the catalogue (ignored).
    pub unknown_items: Vec<String>,
    /// Candidate ids not in the catalogue (cannot be ranked).
    pub unknown_candidates: Vec<String>,
    /// With `user`: how many of the user's stored events came before the request's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_events: Option<usize>,
    /// With `user`: true when the history store could not be read, so the request's own history
    /// was used alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history_store_unavailable: bool,
    pub timing: Timing,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<RecommendResponse>,
}
