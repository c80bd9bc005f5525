//! What runs around every handler: the request id, its span, duration and status metrics,
//! in-flight accounting for the drain and rate-limited refusal logs (`observe`); the admin token,
//! as a layer on the admin routes (`require_admin`); the serving guard, as an extractor
//! ([`Serving`]); and the answers for panics, unknown routes and methods.
use super::error::ApiError;
use super::state::AppState;
use super::throttle::Outcome;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tracing::Instrument;

/// Admits a handler only while the server serves (503 otherwise: starting or shutting down).
pub struct Serving;

impl FromRequestParts<Arc<AppState>> for Serving {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, st: &Arc<AppState>) -> Result<Serving, ApiError> {
        st.serving().map(|()| Serving)
    }
}

/// Path parameters, as axum's `Path`, but a path it cannot read (`/models/%ff%fe`: not UTF-8)
/// gets the JSON error body like every other client mistake, not axum's plain-text 400.
pub struct UrlPath<T>(pub T);

impl<T> FromRequestParts<Arc<AppState>> for UrlPath<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, st).await {
            Ok(axum::extract::Path(v)) => Ok(UrlPath(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                format!("cannot read the path: {}", e.body_text()),
            )),
        }
    }
}

/// Admission of large inference requests (see `throttle`): a body declared over 16 KiB enters
/// only while the adaptive limit allows, and is refused at once otherwise (429, before its body
/// is read); how it ends adjusts the limit.
pub async fn throttle_large(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > super::parse_pool::INLINE_PARSE_BYTES);
    if !large {
        return next.run(req).await;
    }
    let Some(pass) = st.throttle.try_enter() else {
        st.metrics.refuse("parse_busy");
        return ApiError {
            close: true,
            message: "too many large requests in flight to finish this one in time; retry later"
                .into(),
            ..ApiError::overloaded()
        }
        .into_response();
    };
    let resp = next.run(req).await;
    let outcome = match resp.status() {
        s if s.is_success() => Outcome::Answered,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::GATEWAY_TIMEOUT => Outcome::Overloaded,
        _ => Outcome::Neutral,
    };
    pass.done(outcome);
    resp
}

/// The admin routes' bearer token, compared in constant time; refused when no token is
/// configured (403) or the header is missing or wrong (401).
pub async fn require_admin(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&st.cfg.admin.token, req.headers())?;
    Ok(next.run(req).await)
}

fn authorize(token: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    if token.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin routes are disabled: set admin.token (SEQSERVE__ADMIN__TOKEN) to enable them",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ))
    }
}

/// Bounded route label for metrics: known routes, else "other".
fn route_label(path: &str) -> &'static str {
    match path {
        "/recommend" => "/recommend",
        "/recommend/batch" => "/recommend/batch",
        "/events" => "/events",
        // Never the user id itself: labels are bounded, and user ids are personal data.
        p if p.starts_with("/users/") && p.ends_with("/history") => "/users/{user}/history",
        p if p.starts_with("/users/") => "/users/{user}",
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
        p if p.starts_with("/v2/models/") && p.ends_with("/infer") => "/v2/models/infer",
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

/// Request id (accepted or generated, returned), a span carrying it, duration and status metrics,
/// in-flight accounting for the drain, and rate-limited logs of refusals.
pub async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let id = request_id(req.headers());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), route);
    let start = Instant::now();
    let work = !matches!(route, "/health/live" | "/health/ready" | "/metrics");
    let in_flight = work.then(|| st.lifecycle.track());
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
    let hostless =
        req.version() == axum::http::Version::HTTP_11 && !req.headers().contains_key(header::HOST);
    let mut resp = if hostless {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_host",
            "an HTTP/1.1 request must carry a Host header (RFC 9112, section 3.2)",
        )
        .into_response()
    } else {
        next.run(req).instrument(span.clone()).await
    };
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
    if unread_body || st.lifecycle.is_shutting_down() {
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

pub fn ms_header(ms: f64) -> HeaderValue {
    HeaderValue::from_str(&format!("{ms:.3}")).expect("number is a valid header")
}

pub fn on_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(panic = %msg, "handler panicked");
    ApiError::internal("internal error").into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;

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

    #[test]
    fn the_admin_token_is_required_and_compared_exactly() {
        let mut h = HeaderMap::new();
        assert_eq!(authorize("", &h).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(
            authorize("t0k", &h).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t0"));
        assert_eq!(
            authorize("t0k", &h).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(authorize("t0k", &h).is_ok());
    }
}
