//! Health (liveness, readiness, and their KServe v2 aliases) and the Prometheus metrics.
use crate::serve::http::error::{ApiError, ErrorBody};
use crate::serve::http::state::AppState;
use crate::serve::lifecycle::NotServing;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// `{"status": "live"}` or `{"status": "ready"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Liveness: the process answers (whatever its models are doing).
#[utoipa::path(get, path = "/health/live", operation_id = "live", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "live" })
}

/// Liveness at KServe v2's path.
#[utoipa::path(get, path = "/v2/health/live", operation_id = "v2_live", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn v2_live() -> Json<Health> {
    live().await
}

/// Readiness: the models configured at start are loaded and warm, the default model can answer,
/// and the server is not shutting down.
#[utoipa::path(get, path = "/health/ready", operation_id = "ready", tag = "operations", responses(
    (status = 200, description = "Ready for traffic", body = Health),
    (status = 503, description = "Starting, or shutting down", body = ErrorBody)))]
pub async fn ready(State(st): State<Arc<AppState>>) -> Response {
    ready_answer(&st)
}

/// Readiness at KServe v2's path.
#[utoipa::path(get, path = "/v2/health/ready", operation_id = "v2_ready", tag = "operations", responses(
    (status = 200, description = "Ready for traffic", body = Health),
    (status = 503, description = "Starting, or shutting down", body = ErrorBody)))]
pub async fn v2_ready(State(st): State<Arc<AppState>>) -> Response {
    ready_answer(&st)
}

fn ready_answer(st: &AppState) -> Response {
    if st.is_ready() {
        return Json(Health { status: "ready" }).into_response();
    }
    // Not counted as a refusal: a readiness probe is not work.
    match st.lifecycle.serving() {
        Err(e) => ApiError::from(e).into_response(),
        Ok(()) => ApiError::from(NotServing::Starting).into_response(),
    }
}

/// Prometheus metrics (text exposition format). On admin.port when it is set.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.ready.set(st.is_ready() as i64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}
