//! HTTP routes: the router, its middleware (request id, timing, metrics, panic catching) and handlers.
use super::api::{
    self, BatchRequest, BatchResponse, RecommendRequest, RecommendResponse, ScoredItem, Timing,
};
use super::error::{from_json_rejection, ApiError};
use super::queue::{EnqueueError, Job, JobError, JobOutput};
use super::{AppState, Loaded};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.cfg.server.body_limit_bytes;
    Router::new()
        .route("/recommend", post(recommend))
        .route("/recommend/batch", post(recommend_batch))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(super::admin::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(on_panic))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Bounded route label for metrics: known routes, else "other".
fn route_label(path: &str) -> &'static str {
    match path {
        "/recommend" => "/recommend",
        "/recommend/batch" => "/recommend/batch",
        "/health/live" | "/v2/health/live" => "/health/live",
        "/health/ready" | "/v2/health/ready" => "/health/ready",
        "/metrics" => "/metrics",
        "/evaluate" => "/evaluate",
        p if p.starts_with("/evaluate/") => "/evaluate/{id}",
        _ => "other",
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

/// Request id (accepted or generated, returned), a span carrying it, duration and status metrics.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let id = request_id(req.headers());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), route);
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status();
    st.metrics
        .requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    st.metrics
        .request_duration
        .with_label_values(&[route])
        .observe(secs);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(REQUEST_ID.clone(), v);
    }
    h.insert("x-total-time", ms_header(secs * 1000.0));
    span.in_scope(|| {
        let ms = secs * 1000.0;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), ms, "request failed");
        } else if status.is_client_error() {
            tracing::info!(status = status.as_u16(), ms, "request refused");
        } else {
            tracing::debug!(status = status.as_u16(), ms, "request");
        }
    });
    resp
}

fn ms_header(ms: f64) -> HeaderValue {
    HeaderValue::from_str(&format!("{ms:.3}")).expect("number is a valid header")
}

fn on_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(panic = %msg, "handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

async fn ready(State(st): State<Arc<AppState>>) -> Response {
    if st.is_ready() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else if st.shutting_down.load(Ordering::SeqCst) {
        ApiError::not_ready("shutting down").into_response()
    } else {
        ApiError::not_ready("model loading or warming up").into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// Queues one validated request and waits for its result, answering 429 at once when the queue is
/// full and 504 when it cannot start before its deadline.
async fn run_job(
    st: &AppState,
    v: &api::Validated,
    received: Instant,
) -> Result<JobOutput, ApiError> {
    let timeout = Duration::from_millis(v.timeout_ms.unwrap_or(st.cfg.server.request_timeout_ms));
    let deadline = received + timeout;
    let (tx, mut rx) = oneshot::channel();
    let started = Arc::new(AtomicBool::new(false));
    let job = Job {
        query: v.prepared.query.clone(),
        spec: v.spec.clone(),
        enqueued: Instant::now(),
        deadline,
        started: started.clone(),
        reply: tx,
    };
    let loaded = st.loaded()?;
    loaded.queue.submit(job).map_err(|e| match e {
        EnqueueError::Full => {
            st.metrics.rejected.with_label_values(&["queue_full"]).inc();
            ApiError::overloaded()
        }
        EnqueueError::Closed => ApiError::not_ready("shutting down"),
    })?;
    let result = match tokio::time::timeout_at(deadline.into(), &mut rx).await {
        Ok(r) => r,
        // Not started by the deadline: answer now rather than wait behind running batches.
        Err(_) if !started.load(Ordering::SeqCst) => {
            st.metrics.rejected.with_label_values(&["deadline"]).inc();
            return Err(ApiError::deadline());
        }
        Err(_) => rx.await,
    };
    match result {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(JobError::DeadlineExceeded)) => Err(ApiError::deadline()),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the model worker stopped",
        )),
    }
}

fn response(
    loaded: &Loaded,
    v: api::Validated,
    out: JobOutput,
    received: Instant,
) -> RecommendResponse {
    RecommendResponse {
        model: loaded.manifest.name.clone(),
        version: loaded.manifest.version.clone(),
        items: out
            .ranked
            .into_iter()
            .map(|(i, score)| ScoredItem {
                item: loaded.catalogue.id_of(i).to_string(),
                score,
            })
            .collect(),
        unknown_items: v.prepared.unknown_items,
        unknown_candidates: v.unknown_candidates,
        timing: Timing {
            queue_ms: out.queue_time.as_secs_f64() * 1000.0,
            inference_ms: out.inference_time.as_secs_f64() * 1000.0,
            total_ms: received.elapsed().as_secs_f64() * 1000.0,
            batch_size: out.batch_size,
        },
    }
}

fn validate(
    st: &AppState,
    loaded: &Loaded,
    req: RecommendRequest,
) -> Result<api::Validated, ApiError> {
    let v = api::validate(req, &loaded.manifest, &loaded.catalogue, &st.cfg.limits)?;
    st.metrics
        .unknown_items
        .inc_by(v.prepared.unknown_items.len() as u64);
    Ok(v)
}

async fn recommend(
    State(st): State<Arc<AppState>>,
    payload: Result<Json<RecommendRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let loaded = st.loaded()?;
    let Json(req) = payload.map_err(|r| rejected(&st, r))?;
    let v = validate(&st, loaded, req).inspect_err(|_| invalid(&st))?;
    let out = run_job(&st, &v, received).await?;
    let (q, inf) = (out.queue_time, out.inference_time);
    let mut resp = Json(response(loaded, v, out, received)).into_response();
    let h = resp.headers_mut();
    h.insert("x-queue-time", ms_header(q.as_secs_f64() * 1000.0));
    h.insert("x-inference-time", ms_header(inf.as_secs_f64() * 1000.0));
    Ok(resp)
}

async fn recommend_batch(
    State(st): State<Arc<AppState>>,
    payload: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<BatchResponse>, ApiError> {
    let received = Instant::now();
    let loaded = st.loaded()?;
    let Json(batch) = payload.map_err(|r| rejected(&st, r))?;
    let max = st.cfg.limits.max_batch_requests;
    if batch.requests.is_empty() || batch.requests.len() > max {
        invalid(&st);
        return Err(ApiError::validation(format!(
            "requests must hold 1 to {max} requests (limits.max_batch_requests), got {}",
            batch.requests.len()
        )));
    }
    let mut validated = Vec::with_capacity(batch.requests.len());
    for (i, r) in batch.requests.into_iter().enumerate() {
        let v = validate(&st, loaded, r).map_err(|mut e| {
            invalid(&st);
            e.message = format!("requests[{i}]: {}", e.message);
            e
        })?;
        validated.push(v);
    }
    // All requests go to the queue at once so they can share model batches.
    let outs =
        futures_util::future::try_join_all(validated.iter().map(|v| run_job(&st, v, received)))
            .await?;
    Ok(Json(BatchResponse {
        results: validated
            .into_iter()
            .zip(outs)
            .map(|(v, o)| response(loaded, v, o, received))
            .collect(),
    }))
}

fn rejected(st: &AppState, r: JsonRejection) -> ApiError {
    let e = from_json_rejection(r);
    let reason = match e.status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "content_type",
        _ => "invalid",
    };
    st.metrics.rejected.with_label_values(&[reason]).inc();
    e
}

fn invalid(st: &AppState) {
    st.metrics.rejected.with_label_values(&["invalid"]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json_and_the_service_survives() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "ok" }))
            .layer(CatchPanicLayer::custom(on_panic));
        let get = |uri: &'static str| {
            Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let resp = app.clone().oneshot(get("/boom")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "internal");
        assert_eq!(
            app.oneshot(get("/ok")).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_label("/evaluate/eval-17"), "/evaluate/{id}");
        assert_eq!(route_label("/v2/health/ready"), "/health/ready");
        assert_eq!(route_label("/items/123456"), "other");
    }
}
