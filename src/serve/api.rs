//! Request and response bodies of POST /recommend and /recommend/batch, and their validation.
use super::config::LimitsSection;
use super::error::ApiError;
use crate::model::{
    history_events, ContextValue, HistoryEntry, ItemId, ObjectOnly, Prepared, RankSpec,
};
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
    /// The caller's key for sticky A/B assignment (hashed, never stored or exported); absent: a
    /// split assigns the request at random.
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
    pub timing: Timing,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<RecommendResponse>,
}

/// A validated request: the version that answers, the prepared query, what to rank, and what to
/// tell the caller.
pub struct Validated {
    pub served: std::sync::Arc<super::registry::Served>,
    pub split: Option<String>,
    pub prepared: Prepared,
    pub spec: RankSpec,
    pub unknown_candidates: Vec<String>,
    pub timeout_ms: Option<u64>,
}

fn check_id(id: ItemId, field: &str) -> Result<String, ApiError> {
    id.into_checked(field).map_err(ApiError::validation)
}

/// Longest per-request timeout (server.request_timeout_ms has the same bound).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Longest accepted `user` key, in characters.
pub const MAX_USER_KEY: usize = 256;

/// Routes the request (model, version, split) and validates it against the version that answers.
pub fn validate(
    req: RecommendRequest,
    registry: &super::registry::Registry,
    limits: &LimitsSection,
) -> Result<Validated, ApiError> {
    // Characters, as the OpenAPI document's maxLength counts them.
    if req
        .user
        .as_ref()
        .is_some_and(|u| u.chars().count() > MAX_USER_KEY)
    {
        return Err(ApiError::validation(format!(
            "user must be at most {MAX_USER_KEY} characters"
        )));
    }
    let route = registry.route(
        req.model.as_deref(),
        req.version.as_deref(),
        req.user.as_deref(),
    )?;
    let served = route.served.clone();
    let (manifest, catalogue) = (&*served.manifest, &*served.catalogue);
    let k = req.k.unwrap_or(10);
    if k == 0 || k > limits.max_k {
        return Err(crate::error::InputError::BadK {
            got: k,
            max: limits.max_k,
        }
        .into());
    }
    if req.history.len() > limits.max_history {
        return Err(ApiError::validation(format!(
            "history has {} items; the limit is {} (limits.max_history)",
            req.history.len(),
            limits.max_history
        )));
    }
    if let Some(c) = &req.candidates {
        if c.is_empty() || c.len() > limits.max_candidates {
            return Err(ApiError::validation(format!(
                "candidates must hold 1 to {} items (limits.max_candidates), got {}",
                limits.max_candidates,
                c.len()
            )));
        }
    }
    if req.exclude.len() > limits.max_exclude {
        return Err(ApiError::validation(format!(
            "exclude has {} items; the limit is {} (limits.max_exclude)",
            req.exclude.len(),
            limits.max_exclude
        )));
    }
    if req.timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS) {
        return Err(ApiError::validation(format!(
            "timeout_ms must be 1 to {MAX_TIMEOUT_MS}"
        )));
    }
    let history = history_events(req.history, "history").map_err(ApiError::validation)?;
    let prepared = crate::model::prepare(manifest, catalogue, &history, &req.context)?;
    let mut exclude = if req.exclude_seen {
        prepared.seen.clone()
    } else {
        Vec::new()
    };
    for id in req.exclude {
        if let Some(i) = catalogue.index_of(&check_id(id, "exclude")?) {
            exclude.push(i);
        }
    }
    let mut unknown_candidates = Vec::new();
    let candidates = match req.candidates {
        None => None,
        Some(c) => {
            let mut idx = Vec::with_capacity(c.len());
            for id in c {
                let s = check_id(id, "candidates")?;
                match catalogue.index_of(&s) {
                    Some(i) => idx.push(i),
                    None => unknown_candidates.push(s),
                }
            }
            Some(idx)
        }
    };
    Ok(Validated {
        served: served.clone(),
        split: route.split,
        prepared,
        spec: RankSpec {
            k,
            exclude,
            candidates,
        },
        unknown_candidates,
        timeout_ms: req.timeout_ms,
    })
}
