//! HTTP routes: the router, its middleware (request id, timing, metrics, panic catching) and handlers.
use super::api::{
    self, BatchRequest, BatchResponse, RecommendRequest, RecommendResponse, ScoredItem, Timing,
};
use super::body;
use super::config::LimitsSection;
use super::error::{ApiError, ErrorBody};
use super::queue::{EnqueueError, Job, JobError, JobOutput, JobState, RequestFate};
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

/// The public router (inference and health) and, when admin.port is set, the admin router
/// (evaluation, metrics, health) for its own listener; without admin.port one router serves all.
pub fn routers(state: Arc<AppState>) -> (Router, Option<Router>) {
    let public = Router::new()
        .route("/recommend", post(recommend))
        .route("/recommend/batch", post(recommend_batch))
        .merge(super::models::public_routes());
    let admin = Router::new()
        .route("/metrics", get(metrics))
        .merge(super::admin::routes())
        .merge(super::models::admin_routes());
    if state.cfg.admin.port == 0 {
        (finish(public.merge(admin), state), None)
    } else {
        (finish(public, state.clone()), Some(finish(admin, state)))
    }
}

/// Health routes, fallbacks and middleware, shared by both listeners.
fn finish(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/openapi.json", get(super::openapi::openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
        "/openapi.json" => "/openapi.json",
        "/evaluate" => "/evaluate",
        p if p.starts_with("/evaluate/") && p.ends_with("/cancel") => "/evaluate/{id}/cancel",
        p if p.starts_with("/evaluate/") => "/evaluate/{id}",
        "/models" => "/models",
        "/default" => "/default",
        p if p.starts_with("/models/") && p.contains("/versions/") => {
            "/models/{name}/versions/{version}"
        }
        p if p.starts_with("/models/") && p.ends_with("/default") => "/models/{name}/default",
        p if p.starts_with("/models/") => "/models/{name}",
        p if p.starts_with("/splits/") => "/splits/{name}",
        p if p.starts_with("/v2/models/") && p.ends_with("/ready") => "/v2/models/ready",
        p if p.starts_with("/v2/models/") => "/v2/models",
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

/// Counts a request as in-flight work (what shutdown waits for) while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> InFlight<'a> {
        c.fetch_add(1, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Request id (accepted or generated, returned), a span carrying it, duration and status metrics,
/// in-flight accounting for the drain, and rate-limited logs of refusals.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let id = request_id(req.headers());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), route);
    let start = Instant::now();
    let work = !matches!(route, "/health/live" | "/health/ready" | "/metrics");
    let in_flight = work.then(|| InFlight::new(&st.in_flight));
    let mut resp = next.run(req).instrument(span.clone()).await;
    drop(in_flight);
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
    // 408/413: the body was not read to its end, so the connection cannot be reused. Shutting
    // down: keep-alive clients reconnect (to another replica once the load balancer has seen
    // readiness 503) instead of racing our close. Either way, say so.
    let unread_body = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    );
    if unread_body || st.shutting_down.load(Ordering::SeqCst) {
        h.insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    span.in_scope(|| {
        let ms = secs * 1000.0;
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(status = status.as_u16(), ms, "request failed");
        } else if status.is_client_error() || status.is_server_error() {
            // Refusals (4xx, 503, 504) come in floods under overload or attack: a sample per
            // second and a count of the rest (every one is in /metrics).
            let v = st.refusal_log.check();
            if v.suppressed_before > 0 {
                tracing::info!(
                    suppressed = v.suppressed_before,
                    "refused-request lines suppressed (logging.max_refusal_logs_per_sec)"
                );
            }
            if v.log {
                tracing::info!(status = status.as_u16(), ms, "request refused");
            }
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

/// `{"status": "live"}` or `{"status": "ready"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    status: &'static str,
}

/// Liveness: the process answers (whatever its models are doing).
#[utoipa::path(get, path = "/health/live", operation_id = "live", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub(super) async fn live() -> Json<Health> {
    Json(Health { status: "live" })
}

/// Liveness at KServe v2's path.
#[utoipa::path(get, path = "/v2/health/live", operation_id = "v2_live", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub(super) async fn v2_live() -> Json<Health> {
    live().await
}

/// Readiness: the models configured at start are loaded and warm, the default model can answer,
/// and the server is not shutting down.
#[utoipa::path(get, path = "/health/ready", operation_id = "ready", tag = "operations", responses(
    (status = 200, description = "Ready for traffic", body = Health),
    (status = 503, description = "Starting, or shutting down", body = ErrorBody)))]
pub(super) async fn ready(State(st): State<Arc<AppState>>) -> Response {
    ready_answer(&st)
}

/// Readiness at KServe v2's path.
#[utoipa::path(get, path = "/v2/health/ready", operation_id = "v2_ready", tag = "operations", responses(
    (status = 200, description = "Ready for traffic", body = Health),
    (status = 503, description = "Starting, or shutting down", body = ErrorBody)))]
pub(super) async fn v2_ready(State(st): State<Arc<AppState>>) -> Response {
    ready_answer(&st)
}

fn ready_answer(st: &AppState) -> Response {
    if st.is_ready() {
        Json(Health { status: "ready" }).into_response()
    } else if st.shutting_down.load(Ordering::SeqCst) {
        ApiError::not_ready("shutting down").into_response()
    } else {
        ApiError::not_ready("model loading or warming up").into_response()
    }
}

/// Prometheus metrics (text exposition format). On admin.port when it is set.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
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

/// A validated request's job on the queue.
struct Queued {
    state: Arc<JobState>,
    rx: oneshot::Receiver<Result<JobOutput, JobError>>,
    deadline: Instant,
}

/// Queues one validated request (429 at once when the queue is full). `fate` is shared by all the
/// jobs of one HTTP request so that its refusal is counted once.
fn submit(
    st: &AppState,
    v: &api::Validated,
    received: Instant,
    fate: &Arc<RequestFate>,
) -> Result<Queued, ApiError> {
    let timeout = Duration::from_millis(v.timeout_ms.unwrap_or(st.cfg.server.request_timeout_ms));
    let deadline = received + timeout;
    let (tx, rx) = oneshot::channel();
    let state = Arc::new(JobState::default());
    let job = Job {
        query: v.prepared.query.clone(),
        spec: v.spec.clone(),
        enqueued: Instant::now(),
        deadline,
        state: state.clone(),
        fate: fate.clone(),
        reply: tx,
    };
    v.served.queue.submit(job).map_err(|e| match e {
        EnqueueError::Full => {
            fate.refuse_once(&st.metrics, "queue_full");
            ApiError::overloaded()
        }
        EnqueueError::Closed => ApiError::not_ready("shutting down"),
    })?;
    Ok(Queued {
        state,
        rx,
        deadline,
    })
}

impl Queued {
    /// Waits for the result, answering 504 at the deadline when the job has not started (rather
    /// than waiting behind running batches).
    async fn wait(mut self, st: &AppState, fate: &RequestFate) -> Result<JobOutput, ApiError> {
        let result = match tokio::time::timeout_at(self.deadline.into(), &mut self.rx).await {
            Ok(r) => r,
            Err(_) if self.state.abandon() => {
                fate.refuse_once(&st.metrics, "deadline");
                return Err(ApiError::deadline());
            }
            // Started (or abandoned by the worker, which answers): wait for its answer.
            Err(_) => self.rx.await,
        };
        match result {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(JobError::DeadlineExceeded)) => Err(ApiError::deadline()),
            Err(_) => Err(ApiError::not_ready(
                "the model worker stopped (shutting down)",
            )),
        }
    }

    /// Withdraws a queued job (its batch-mates were refused): the worker skips it uncounted.
    fn withdraw(self) {
        self.state.abandon();
    }
}

/// Queues all of a request's jobs at once (so they can share model batches) and waits for them.
/// If one cannot be queued, the others are withdrawn and the request is refused once.
async fn run_jobs(
    st: &AppState,
    validated: &[api::Validated],
    received: Instant,
) -> Result<Vec<JobOutput>, ApiError> {
    let fate = Arc::new(RequestFate::default());
    let mut queued = Vec::with_capacity(validated.len());
    for v in validated {
        match submit(st, v, received, &fate) {
            Ok(q) => queued.push(q),
            Err(e) => {
                queued.into_iter().for_each(Queued::withdraw);
                return Err(e);
            }
        }
    }
    futures_util::future::try_join_all(queued.into_iter().map(|q| q.wait(st, &fate))).await
}

fn response(v: api::Validated, out: JobOutput, received: Instant) -> RecommendResponse {
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
        timing: Timing {
            queue_ms: out.queue_time.as_secs_f64() * 1000.0,
            inference_ms: out.inference_time.as_secs_f64() * 1000.0,
            total_ms: received.elapsed().as_secs_f64() * 1000.0,
            batch_size: out.batch_size,
        },
    }
}

/// Parses and validates a body (off the async threads when large; see body.rs). Validation
/// resolves ids against the catalogue and counts unknown history items.
async fn parse_request<T, R>(
    st: &Arc<AppState>,
    req: Request,
    validate: impl FnOnce(T, &super::registry::Registry, &LimitsSection) -> Result<R, ApiError>
        + Send
        + 'static,
) -> Result<R, ApiError>
where
    T: serde::de::DeserializeOwned,
    R: Send + 'static,
{
    let bytes = body::read_json_body(st, req).await?;
    let st2 = st.clone();
    body::parse_then(st, bytes, move |req: T| {
        let registry = st2.check_serving()?;
        validate(req, registry, &st2.cfg.limits)
    })
    .await
    .inspect_err(|e| {
        if matches!(
            e.status,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
        ) {
            st.metrics.refuse("invalid");
        }
    })
}

fn count_unknown(st: &AppState, v: &api::Validated) {
    st.metrics
        .unknown_items
        .inc_by(v.prepared.unknown_items.len() as u64);
}

/// Ranks the catalogue for one history (and context): the top `k` items, best first.
#[utoipa::path(post, path = "/recommend", operation_id = "recommend", tag = "inference",
    request_body = RecommendRequest,
    responses(
        (status = 200, description = "Ranked items", body = RecommendResponse),
        (status = 404, description = "No such model, version or split", body = ErrorBody),
        (status = 429, description = "The queue is full; retry after Retry-After seconds", body = ErrorBody),
        (status = 504, description = "The request could not start before its deadline (timeout_ms)", body = ErrorBody),
    ))]
pub(super) async fn recommend(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    st.check_serving()?;
    let v = parse_request(&st, req, api::validate).await?;
    count_unknown(&st, &v);
    let out = run_jobs(&st, std::slice::from_ref(&v), received)
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
pub(super) async fn recommend_batch(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Json<BatchResponse>, ApiError> {
    let received = Instant::now();
    st.check_serving()?;
    let validated = parse_request(&st, req, |batch: BatchRequest, registry, limits| {
        let max = limits.max_batch_requests;
        if batch.requests.is_empty() || batch.requests.len() > max {
            return Err(ApiError::validation(format!(
                "requests must hold 1 to {max} requests (limits.max_batch_requests), got {}",
                batch.requests.len()
            )));
        }
        batch
            .requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                api::validate(r.0, registry, limits).map_err(|mut e| {
                    e.message = format!("requests[{i}]: {}", e.message);
                    e
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    for v in &validated {
        count_unknown(&st, v);
    }
    let outs = run_jobs(&st, &validated, received).await?;
    Ok(Json(BatchResponse {
        results: validated
            .into_iter()
            .zip(outs)
            .map(|(v, o)| response(v, o, received))
            .collect(),
    }))
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
