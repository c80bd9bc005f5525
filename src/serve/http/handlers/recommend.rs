//! POST /recommend and /recommend/batch, in the order a request goes: read the body, parse it,
//! ask the registry which version answers, validate the request against that version, rank it
//! (infer → the version's queue → its model worker), answer.
use crate::model::{history_events, HistoryEvent, ItemId, Prepared, RankSpec};
use crate::serve::config::{LimitsSection, MAX_TIMEOUT_MS, MAX_USER_KEY};
use crate::serve::history::StoredEvent;
use crate::serve::http::body;
use crate::serve::http::error::{ApiError, ErrorBody};
use crate::serve::http::middleware::{ms_header, Serving};
use crate::serve::http::state::AppState;
use crate::serve::http::types::{
    BatchRequest, BatchResponse, RecommendRequest, RecommendResponse, ScoredItem, Timing,
};
use crate::serve::infer::queue::JobOutput;
use crate::serve::infer::Request as Work;
use crate::serve::registry::{Route, Served};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ranks the catalogue for one history (and context): the top `k` items, best first.
#[utoipa::path(post, path = "/recommend", operation_id = "recommend", tag = "inference",
    request_body = RecommendRequest,
    responses(
        (status = 200, description = "Ranked items", body = RecommendResponse),
        (status = 404, description = "No such model, version or split", body = ErrorBody),
        (status = 429, description = "The queue is full; retry after Retry-After seconds", body = ErrorBody),
        (status = 504, description = "The request could not start before its deadline (timeout_ms)", body = ErrorBody),
    ))]
pub async fn recommend(
    State(st): State<Arc<AppState>>,
    _: Serving,
    req: Request,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = body::read_json_body(&st, req).await?;
    let size = bytes.len();
    // Parsing and validating a large body runs off the async threads (see ParsePool::run).
    let req: RecommendRequest = st
        .parse_pool
        .run(&st.metrics, size, move || body::from_json(&bytes))
        .await
        .inspect_err(|e| count_invalid(&st, e))?;
    // Again: reading the body may have taken until shutdown began.
    st.serving()?;
    let mut stored = stored_histories(&st, std::slice::from_ref(&req)).await?;
    let st2 = st.clone();
    let v = st
        .parse_pool
        .run(&st.metrics, size, move || {
            prepare(&st2, req, stored.pop().expect("one request"))
        })
        .await
        .inspect_err(|e| count_invalid(&st, e))?;
    count_unknown(&st, &v);
    let out = st
        .infer
        .run(vec![work(&st, &v, received)])
        .await?
        .pop()
        .expect("one job, one output");
    let (q, inf) = (out.queue_time, out.inference_time);
    let mut resp = Json(response(v, out, received)).into_response();
    let h = resp.headers_mut();
    h.insert("x-queue-time", ms_header(q.as_secs_f64() * 1000.0));
    h.insert("x-inference-time", ms_header(inf.as_secs_f64() * 1000.0));
    Ok(resp)
}

/// Ranks several requests in one call (each validated against its own model version); they
/// share the batching queue with single requests.
#[utoipa::path(post, path = "/recommend/batch", operation_id = "recommend_batch", tag = "inference",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per request, in order", body = BatchResponse),
        (status = 404, description = "A request names no loaded model, version or split", body = ErrorBody),
        (status = 429, description = "The queue is full; retry after Retry-After seconds", body = ErrorBody),
        (status = 504, description = "A request could not start before its deadline", body = ErrorBody),
    ))]
pub async fn recommend_batch(
    State(st): State<Arc<AppState>>,
    _: Serving,
    req: Request,
) -> Result<Json<BatchResponse>, ApiError> {
    let received = Instant::now();
    let bytes = body::read_json_body(&st, req).await?;
    let size = bytes.len();
    let batch: BatchRequest = st
        .parse_pool
        .run(&st.metrics, size, move || body::from_json(&bytes))
        .await
        .inspect_err(|e| count_invalid(&st, e))?;
    st.serving()?;
    check_batch_len(batch.requests.len(), &st.cfg.limits, "requests")
        .inspect_err(|e| count_invalid(&st, e))?;
    let requests: Vec<RecommendRequest> = batch.requests.into_iter().map(|r| r.0).collect();
    // Every user of the batch read in one round trip.
    let stored = stored_histories(&st, &requests).await?;
    let st2 = st.clone();
    let validated = st
        .parse_pool
        .run(&st.metrics, size, move || {
            prepare_batch(&st2, requests, stored)
        })
        .await
        .inspect_err(|e| count_invalid(&st, e))?;
    for v in &validated {
        count_unknown(&st, v);
    }
    let outs = st
        .infer
        .run(validated.iter().map(|v| work(&st, v, received)).collect())
        .await?;
    Ok(Json(BatchResponse {
        results: validated
            .into_iter()
            .zip(outs)
            .map(|(v, o)| response(v, o, received))
            .collect(),
    }))
}

/// A validated request: the version that answers, the prepared query, what to rank, and what to
/// tell the caller.
pub struct Validated {
    pub served: Arc<Served>,
    pub split: Option<String>,
    pub prepared: Prepared,
    pub spec: RankSpec,
    pub unknown_candidates: Vec<String>,
    pub timeout_ms: Option<u64>,
    /// What the history store gave this request.
    pub stored: Stored,
}

/// What the history store gave one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// No `user`: the request's own history alone.
    NotAsked,
    /// The user's stored events (oldest first); the request's own come after them.
    Events(Vec<StoredEvent>),
    /// The store failed: the request's own history alone (it has one), and the answer says so.
    Unavailable,
}

/// The stored histories of the requests that name a user, in one store read. When the store
/// fails, requests that carry their own history are served from it alone (marked, and counted
/// in seqserve_history_fallbacks_total); a request that has nothing but its user is refused (503)
/// — for a batch, the whole call, as its answers are all or nothing.
pub(crate) async fn stored_histories(
    st: &AppState,
    requests: &[RecommendRequest],
) -> Result<Vec<Stored>, ApiError> {
    let users: Vec<String> = requests.iter().filter_map(|r| r.user.clone()).collect();
    if users.is_empty() {
        return Ok(vec![Stored::NotAsked; requests.len()]);
    }
    match st.history.read(&users).await {
        Ok(found) => {
            let mut found = found.into_iter();
            Ok(requests
                .iter()
                .map(|r| match &r.user {
                    Some(_) => Stored::Events(found.next().unwrap_or_default()),
                    None => Stored::NotAsked,
                })
                .collect())
        }
        Err(e) => {
            if requests
                .iter()
                .any(|r| r.user.is_some() && r.history.is_empty())
            {
                st.metrics.refuse("history_unavailable");
                return Err(e.into());
            }
            let n = requests.iter().filter(|r| r.user.is_some()).count();
            st.metrics.history_fallbacks.inc_by(n as u64);
            Ok(requests
                .iter()
                .map(|r| match &r.user {
                    Some(_) => Stored::Unavailable,
                    None => Stored::NotAsked,
                })
                .collect())
        }
    }
}

/// Routes one request (model, version, split) and validates it against the version that
/// answers, with what the history store gave it.
fn prepare(st: &AppState, req: RecommendRequest, stored: Stored) -> Result<Validated, ApiError> {
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
    let route = st.registry.route(
        req.model.as_deref(),
        req.version.as_deref(),
        req.user.as_deref(),
    )?;
    validate(req, route, &st.cfg.limits, stored)
}

/// The one bound on how many requests one call may carry (a /recommend/batch body, a v2
/// tensor's batch dimension); `field` names where the count came from.
pub(crate) fn check_batch_len(
    n: usize,
    limits: &LimitsSection,
    field: &str,
) -> Result<(), ApiError> {
    let max = limits.max_batch_requests;
    if n == 0 || n > max {
        return Err(ApiError::validation(format!(
            "{field} must hold 1 to {max} requests (limits.max_batch_requests), got {n}"
        )));
    }
    Ok(())
}

/// Each request of a batch on its own, its errors prefixed with its index.
fn prepare_batch(
    st: &AppState,
    requests: Vec<RecommendRequest>,
    stored: Vec<Stored>,
) -> Result<Vec<Validated>, ApiError> {
    requests
        .into_iter()
        .zip(stored)
        .enumerate()
        .map(|(i, (r, stored))| {
            prepare(st, r, stored).map_err(|mut e| {
                e.message = format!("requests[{i}]: {}", e.message);
                e
            })
        })
        .collect()
}

fn check_id(id: ItemId, field: &str) -> Result<String, ApiError> {
    id.into_checked(field).map_err(ApiError::validation)
}

/// Checks a request against the limits and resolves it against the version `route` names
/// (every way in — /recommend, /recommend/batch, the KServe v2 tensors — ends here).
pub(crate) fn validate(
    req: RecommendRequest,
    route: Route,
    limits: &LimitsSection,
    stored: Stored,
) -> Result<Validated, ApiError> {
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
    // The stored events first, the request's own after them. A stored behaviour this model does
    // not know counts as none (one odd event must not make a user's requests fail).
    let mut history: Vec<HistoryEvent> = match &stored {
        Stored::Events(events) => events
            .iter()
            .map(|e| HistoryEvent {
                item: e.item.clone(),
                behaviour: e
                    .behaviour
                    .clone()
                    .filter(|b| manifest.behaviours.contains(b)),
            })
            .collect(),
        Stored::NotAsked | Stored::Unavailable => Vec::new(),
    };
    history.extend(history_events(req.history, "history").map_err(ApiError::validation)?);
    let prepared = crate::model::prepare(manifest, catalogue, &history, &req.context)?;
    let mut exclude = if req.exclude_seen {
        prepared.seen.clone()
    } else {
        Vec::new()
    };
    // Excluding an item the catalogue lacks changes nothing: unknown ids are dropped.
    let excluded = req
        .exclude
        .into_iter()
        .map(|id| check_id(id, "exclude"))
        .collect::<Result<Vec<_>, _>>()?;
    exclude.extend(catalogue.split_known(excluded).0);
    let (candidates, unknown_candidates) = match req.candidates {
        None => (None, Vec::new()),
        Some(c) => {
            let ids = c
                .into_iter()
                .map(|id| check_id(id, "candidates"))
                .collect::<Result<Vec<_>, _>>()?;
            let (idx, unknown) = catalogue.split_known(ids);
            (Some(idx), unknown)
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
        stored,
    })
}

/// The queue job of a validated request, due at its deadline.
pub(crate) fn work(st: &AppState, v: &Validated, received: Instant) -> Work {
    let timeout = Duration::from_millis(v.timeout_ms.unwrap_or(st.cfg.server.request_timeout_ms));
    Work {
        queue: v.served.queue.clone(),
        query: v.prepared.query.clone(),
        spec: v.spec.clone(),
        deadline: received + timeout,
    }
}

fn response(v: Validated, out: JobOutput, received: Instant) -> RecommendResponse {
    let served = &v.served;
    RecommendResponse {
        model: served.name.clone(),
        version: served.version.clone(),
        split: v.split,
        retrieval: served.retrieval.to_string(),
        items: out
            .ranked
            .into_iter()
            .map(|(i, score)| ScoredItem {
                item: served.catalogue.id_of(i).to_string(),
                score,
            })
            .collect(),
        unknown_items: v.prepared.unknown_items,
        unknown_candidates: v.unknown_candidates,
        stored_events: match &v.stored {
            Stored::Events(e) => Some(e.len()),
            Stored::NotAsked | Stored::Unavailable => None,
        },
        history_store_unavailable: v.stored == Stored::Unavailable,
        timing: Timing {
            queue_ms: out.queue_time.as_secs_f64() * 1000.0,
            inference_ms: out.inference_time.as_secs_f64() * 1000.0,
            total_ms: received.elapsed().as_secs_f64() * 1000.0,
            batch_size: out.batch_size,
        },
    }
}

pub(crate) fn count_invalid(st: &AppState, e: &ApiError) {
    if e.is_invalid_request() {
        st.metrics.refuse("invalid");
    }
}

pub(crate) fn count_unknown(st: &AppState, v: &Validated) {
    st.metrics
        .unknown_items
        .inc_by(v.prepared.unknown_items.len() as u64);
}
