//! The one route table: every route, public and admin, and the layers around them. Without
//! admin.port one router serves all; with it, the admin router (management, evaluations,
//! /metrics) gets its own listener. Health routes, /openapi.json and the fallbacks are on both.
use super::handlers::{evaluate, events, health, models, recommend, v2_infer};
use super::middleware::{
    method_not_allowed, not_found, observe, on_panic, require_admin, throttle_large,
};
use super::openapi;
use super::state::AppState;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;

/// The public router and, when admin.port is set, the admin router for its own listener.
pub fn routers(state: Arc<AppState>) -> (Router, Option<Router>) {
    // Inference: large bodies are admitted by the adaptive throttle (a route layer).
    let inference = Router::new()
        .route("/recommend", post(recommend::recommend))
        .route("/recommend/batch", post(recommend::recommend_batch))
        .route("/v2/models/{name}/infer", post(v2_infer::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2_infer::infer_version),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            throttle_large,
        ));
    let public = Router::new()
        .merge(inference)
        .route("/events", post(events::post_events))
        .route("/models", get(models::list))
        .route("/models/{name}", get(models::one))
        .route("/v2/models/{name}", get(models::v2_metadata))
        .route("/v2/models/{name}/ready", get(models::v2_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(models::v2_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(models::v2_version_ready),
        );
    // Behind the bearer token (a route layer: unknown routes and methods answer 404/405 first).
    let token = Router::new()
        .route("/evaluate", post(evaluate::start))
        .route(
            "/evaluate/{id}",
            get(evaluate::status).delete(evaluate::delete),
        )
        .route("/evaluate/{id}/cancel", post(evaluate::cancel))
        .route(
            "/models/{name}/versions/{version}",
            post(models::load).delete(models::unload),
        )
        .route("/models/{name}/default", put(models::set_default_version))
        .route("/default", put(models::set_default_model))
        .route(
            "/splits/{name}",
            put(models::set_split).delete(models::remove_split),
        )
        .route("/users/{user}/history", get(events::get_history))
        .route("/users/{user}", axum::routing::delete(events::erase_user))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let admin = Router::new()
        .route("/metrics", get(health::metrics))
        .merge(token);
    if state.cfg.admin.port == 0 {
        (finish(public.merge(admin), state), None)
    } else {
        (finish(public, state.clone()), Some(finish(admin, state)))
    }
}

/// Health routes, the OpenAPI document, fallbacks and middleware, shared by both listeners.
fn finish(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/v2/health/live", get(health::v2_live))
        .route("/v2/health/ready", get(health::v2_ready))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(on_panic))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
