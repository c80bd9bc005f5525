//! User histories over HTTP: `POST /events` appends a batch of events to the history store
//! (validated as a whole: one bad event refuses the batch, naming its index, and nothing is
//! written); admin `GET /users/{user}/history` and `DELETE /users/{user}` (erasure: a store of
//! personal data must be able to forget a person).
use crate::model::{ItemId, ObjectOnly};
use crate::serve::config::MAX_USER_KEY;
use crate::serve::history::{NewEvent, StoreError, StoredEvent};
use crate::serve::http::body;
use crate::serve::http::error::{ApiError, ErrorBody};
use crate::serve::http::middleware::{Serving, UrlPath};
use crate::serve::http::state::AppState;
use axum::extract::{Request, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// Latest timestamp accepted: 9999-12-31T23:59:59Z, in Unix seconds.
const MAX_TIMESTAMP: u64 = 253_402_300_799;
/// Longest behaviour name, in characters.
const MAX_BEHAVIOUR_CHARS: usize = 64;

/// One event: who did what.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// The user (a string of 1 to 256 characters, or a non-negative integer).
    #[schema(value_type = ItemId)]
    user: ItemId,
    /// The item.
    item: ItemId,
    /// A behaviour name (click, cart, buy...), as the models know them; absent: none.
    #[serde(default, alias = "behavior")]
    #[schema(min_length = 1, max_length = 64)]
    behaviour: Option<String>,
    /// When, in Unix seconds (0 to 253402300799); kept with the event.
    #[serde(default, deserialize_with = "crate::model::optional_integer")]
    #[schema(minimum = 0, maximum = 253_402_300_799u64)]
    timestamp: Option<u64>,
    /// The caller's id of this event: one posted again (a retry) is counted once.
    #[serde(default)]
    #[schema(value_type = Option<ItemId>)]
    event_id: Option<ItemId>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    /// 1 to history.max_events_per_request events, applied in order.
    #[schema(value_type = Vec<EventIn>, min_items = 1)]
    events: Vec<ObjectOnly<EventIn>>,
}

/// What an append did.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsAccepted {
    /// Events appended.
    accepted: usize,
    /// Events skipped because their event_id was seen before for that user.
    duplicates: usize,
}

fn user_id(id: ItemId, field: &str) -> Result<String, String> {
    let s = id.into_text();
    if s.is_empty() || s.chars().count() > MAX_USER_KEY {
        return Err(format!("{field}: must be 1 to {MAX_USER_KEY} characters"));
    }
    Ok(s)
}

/// Checks every event; the first bad one refuses the whole batch, by its index.
fn validate(req: EventsRequest, max: usize) -> Result<Vec<NewEvent>, ApiError> {
    if req.events.is_empty() || req.events.len() > max {
        return Err(ApiError::validation(format!(
            "events must hold 1 to {max} events (history.max_events_per_request), got {}",
            req.events.len()
        )));
    }
    req.events
        .into_iter()
        .enumerate()
        .map(|(i, ObjectOnly(e))| {
            let at = |m: String| ApiError::validation(format!("events[{i}].{m}"));
            let user = user_id(e.user, "user").map_err(at)?;
            let item = e.item.into_checked("item").map_err(at)?;
            if let Some(b) = &e.behaviour {
                if b.is_empty() || b.chars().count() > MAX_BEHAVIOUR_CHARS {
                    return Err(at(format!(
                        "behaviour: must be 1 to {MAX_BEHAVIOUR_CHARS} characters"
                    )));
                }
            }
            if e.timestamp.is_some_and(|t| t > MAX_TIMESTAMP) {
                return Err(at(format!(
                    "timestamp: must be Unix seconds from 0 to {MAX_TIMESTAMP}"
                )));
            }
            let event_id = e
                .event_id
                .map(|id| user_id(id, "event_id"))
                .transpose()
                .map_err(at)?;
            Ok(NewEvent {
                user,
                event_id,
                event: StoredEvent {
                    item,
                    behaviour: e.behaviour,
                    timestamp: e.timestamp.map(|t| t as i64),
                },
            })
        })
        .collect()
}

/// Appends events to users' histories (in order; a repeated event_id counted once). Answered
/// only once the store has them (with Redis: acknowledged).
#[utoipa::path(post, path = "/events", operation_id = "post_events", tag = "history",
    request_body = EventsRequest,
    responses(
        (status = 200, description = "Stored", body = EventsAccepted),
        (status = 503, description = "The history store is unavailable: nothing was stored", body = ErrorBody),
    ))]
pub async fn post_events(
    State(st): State<Arc<AppState>>,
    _: Serving,
    req: Request,
) -> Result<Json<EventsAccepted>, ApiError> {
    let bytes = body::read_json_body(&st, req).await?;
    let max = st.cfg.history.max_events_per_request;
    let events = st
        .parse_pool
        .run(&st.metrics, bytes.len(), move || {
            let req: EventsRequest = body::from_json(&bytes)?;
            validate(req, max)
        })
        .await
        .inspect_err(|e| {
            if e.is_invalid_request() {
                st.metrics.refuse("invalid");
            }
        })?;
    let accepted = st
        .history
        .append(&events)
        .await
        .map_err(|e| unavailable(&st, e))?;
    Ok(Json(EventsAccepted {
        accepted,
        duplicates: events.len() - accepted,
    }))
}

fn unavailable(st: &AppState, e: StoreError) -> ApiError {
    st.metrics.refuse("history_unavailable");
    ApiError::from(e)
}

/// One event of a stored history.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    item: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    behaviour: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
}

/// A user's stored history, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserHistory {
    user: String,
    events: Vec<EventOut>,
}

/// A user's stored history (admin: it is personal data).
#[utoipa::path(get, path = "/users/{user}/history", operation_id = "get_user_history", tag = "history",
    security(("admin_token" = [])),
    params(("user" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The stored events, oldest first (none for an unknown user)", body = UserHistory),
        (status = 422, description = "The user id is not 1 to 256 characters", body = ErrorBody),
        (status = 503, description = "The history store is unavailable", body = ErrorBody),
    ))]
pub async fn get_history(
    State(st): State<Arc<AppState>>,
    UrlPath(user): UrlPath<String>,
    _: Serving,
) -> Result<Json<UserHistory>, ApiError> {
    let user = user_id(ItemId::Str(user), "user").map_err(ApiError::validation)?;
    let mut h = st
        .history
        .read(std::slice::from_ref(&user))
        .await
        .map_err(|e| unavailable(&st, e))?;
    Ok(Json(UserHistory {
        user,
        events: h
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(|e| EventOut {
                item: e.item,
                behaviour: e.behaviour,
                timestamp: e.timestamp,
            })
            .collect(),
    }))
}

/// What erasing a user did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserErased {
    user: String,
    /// Whether the store held a history for the user.
    erased: bool,
}

/// Erases a user's stored history (admin), as a store of personal data must on request.
#[utoipa::path(delete, path = "/users/{user}", operation_id = "erase_user", tag = "history",
    security(("admin_token" = [])),
    params(("user" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "Erased (or there was nothing to erase)", body = UserErased),
        (status = 422, description = "The user id is not 1 to 256 characters", body = ErrorBody),
        (status = 503, description = "The history store is unavailable: nothing was erased", body = ErrorBody),
    ))]
pub async fn erase_user(
    State(st): State<Arc<AppState>>,
    UrlPath(user): UrlPath<String>,
    _: Serving,
) -> Result<Json<UserErased>, ApiError> {
    let user = user_id(ItemId::Str(user), "user").map_err(ApiError::validation)?;
    let erased = st
        .history
        .delete(&user)
        .await
        .map_err(|e| unavailable(&st, e))?;
    Ok(Json(UserErased { user, erased }))
}
