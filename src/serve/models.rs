//! Model routes. Public discovery: `GET /models`, `GET /models/{name}` and the KServe v2 model
//! routes (`/v2/models/{name}`, `…/ready`, `…/versions/{v}`, `…/versions/{v}/ready`). Admin
//! management (bearer token; TorchServe's management API is the model): load a version beside what
//! serves, switch a model's default version, unload, set the default model, and A/B splits.
use super::admin::authorize;
use super::error::ApiError;
use super::registry::{Served, Snapshot};
use super::split::Split;
use super::AppState;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn public_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/models", get(list))
        .route("/models/{name}", get(one))
        .route("/v2/models/{name}", get(v2_metadata))
        .route("/v2/models/{name}/ready", get(v2_ready))
        .route("/v2/models/{name}/versions/{version}", get(v2_version))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2_version_ready),
        )
}

pub fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/models/{name}/versions/{version}",
            post(load).delete(unload),
        )
        .route("/models/{name}/default", put(set_default_version))
        .route("/default", put(set_default_model))
        .route("/splits/{name}", put(set_split).delete(remove_split))
}

fn describe_version(s: &Served, is_default: bool) -> Value {
    let m = &s.manifest;
    let a = &m.architecture;
    // The training record without its per-epoch log (which can be long): how and on what.
    let training = m.training.as_ref().map(|t| {
        json!({
            "data": t.data, "log_sha256": t.log_sha256, "split": t.split.to_string(),
            "seed": t.seed, "epochs_run": t.epochs_run, "best_epoch": t.best_epoch,
            "selection_metric": t.selection_metric, "stopped_by": t.stopped_by,
            "wall_time_seconds": t.wall_time_seconds, "command": t.command,
        })
    });
    json!({
        "name": s.name,
        "version": s.version,
        "default": is_default,
        "state": "ready",
        "device": s.device,
        "retrieval": s.retrieval,
        "intra_op_threads": s.threads,
        "queue_depth": s.queue.depth(),
        "loaded_at_unix": s.loaded_at_unix,
        "load_seconds": s.load_seconds,
        "path": s.path.display().to_string(),
        "manifest": {"name": m.name, "version": m.version},
        "n_items": a.n_items,
        "max_len": a.max_len,
        "architecture": a,
        "behaviours": m.behaviours,
        "context": m.context,
        "training": training,
        "metrics": m.metrics,
    })
}

fn describe_model(
    st: &AppState,
    name: &str,
    default_version: &str,
    versions: &[Arc<Served>],
) -> Value {
    let reg = &st.registry;
    let on_disk = reg
        .repository
        .as_ref()
        .map(|r| r.versions(name))
        .unwrap_or_default();
    let events: Vec<_> = reg
        .events()
        .into_iter()
        .filter(|e| e.model == name)
        .collect();
    let draining: Vec<String> = reg
        .draining()
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect();
    json!({
        "name": name,
        "default_version": default_version,
        "versions": versions.iter().map(|s| describe_version(s, s.version == default_version)).collect::<Vec<_>>(),
        "repository_versions": on_disk,
        "draining_versions": draining,
        "load_events": events,
    })
}

fn ready_or_503(st: &AppState) -> Result<(), ApiError> {
    st.check_serving().map(|_| ())
}

async fn list(State(st): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    ready_or_503(&st)?;
    let Snapshot {
        default_model,
        models,
        splits,
    } = st.registry.snapshot();
    let loaded: Vec<&str> = models.iter().map(|(n, _, _)| n.as_str()).collect();
    // Models that failed to load entirely (never served) are listed too, with the reason.
    let failed: Vec<_> = st
        .registry
        .events()
        .into_iter()
        .filter(|e| !loaded.contains(&e.model.as_str()))
        .collect();
    Ok(Json(json!({
        "default_model": default_model,
        "models": models.iter().map(|(n, d, v)| describe_model(&st, n, d, v)).collect::<Vec<_>>(),
        "splits": splits,
        "load_events_of_unloaded_models": failed,
    })))
}

async fn one(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    ready_or_503(&st)?;
    let snap = st.registry.snapshot();
    if let Some((n, d, v)) = snap.models.iter().find(|(n, _, _)| *n == name) {
        return Ok(Json(describe_model(&st, n, d, v)));
    }
    if let Some(s) = snap.splits.get(&name) {
        return Ok(Json(json!({"name": name, "split": s})));
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!("no model or split {name:?} is loaded"),
    ))
}

fn v2_body(s: &Served, versions: Vec<String>) -> Value {
    json!({
        "name": s.name,
        "versions": versions,
        "platform": "seqserve_libtorch",
        "inputs": [
            {"name": "history", "datatype": "BYTES", "shape": [-1]},
            {"name": "context", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "items", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1]},
        ],
    })
}

async fn v2_metadata(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    st.check_serving()?;
    let s = st.registry.exact(&name, None)?;
    let versions = st
        .registry
        .snapshot()
        .models
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, v)| v.iter().map(|s| s.version.clone()).collect())
        .unwrap_or_default();
    Ok(Json(v2_body(&s, versions)))
}

async fn v2_version(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    st.check_serving()?;
    let s = st.registry.exact(&name, Some(&version))?;
    Ok(Json(v2_body(&s, vec![version])))
}

/// 200 `{"name", "ready": true}` when the model (version) can answer now; 404 for an unknown one;
/// 503 while the server is starting or shutting down.
fn v2_ready_answer(st: &AppState, name: &str, version: Option<&str>) -> Response {
    if let Err(e) = st.check_serving() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"name": name, "ready": false, "error": e.message})),
        )
            .into_response();
    }
    match st.registry.exact(name, version) {
        Ok(s) => Json(json!({"name": s.name, "version": s.version, "ready": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn v2_ready(State(st): State<Arc<AppState>>, UrlPath(name): UrlPath<String>) -> Response {
    v2_ready_answer(&st, &name, None)
}

async fn v2_version_ready(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Response {
    v2_ready_answer(&st, &name, Some(&version))
}

/// An admin body that may be absent (no Content-Type and no bytes: the defaults).
async fn optional_body<T: serde::de::DeserializeOwned + Default + Send + 'static>(
    st: &AppState,
    req: Request,
) -> Result<T, ApiError> {
    let no_body = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_none()
        && req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
        && req
            .headers()
            .get(axum::http::header::TRANSFER_ENCODING)
            .is_none();
    if no_body {
        return Ok(T::default());
    }
    required_body(st, req).await
}

async fn required_body<T: serde::de::DeserializeOwned + Send + 'static>(
    st: &AppState,
    req: Request,
) -> Result<T, ApiError> {
    let bytes = super::body::read_json_body(st, req).await?;
    super::body::parse_then(st, bytes, Ok).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadOptions {
    /// Make it the model's default version once it is warm (the swap).
    #[serde(default)]
    default: bool,
    /// With `default`: unload the version that was the default, after its queue drains.
    #[serde(default)]
    retire_previous: bool,
}

/// POST /models/{name}/versions/{version} (`latest` = the repository's newest): loads and warms up
/// the version beside what serves, then applies the options. 200 with the version once it is
/// ready (201 when newly loaded); a version that fails is 422 with the reason, and nothing changes.
async fn load(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    authorize(&st, req.headers())?;
    st.check_serving()?;
    let opts: LoadOptions = optional_body(&st, req).await?;
    if opts.retire_previous && !opts.default {
        return Err(ApiError::validation(
            "retire_previous needs default: true (only a replaced default is retired)",
        ));
    }
    let st2 = st.clone();
    let version = (version != "latest").then_some(version);
    let outcome = tokio::task::spawn_blocking(move || {
        st2.registry.load(
            &name,
            version.as_deref(),
            opts.default,
            opts.retire_previous,
        )
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "load task failed",
        )
    })??;
    let status = if outcome.newly_loaded {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(describe_version(&outcome.served, outcome.is_default)),
    )
        .into_response())
}

async fn unload(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    st.registry.unload(&name, &version)?;
    Ok(Json(json!({
        "model": name, "version": version, "status": "unloading",
        "message": "removed from routing; requests already queued on it finish there, then its memory is freed",
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultVersion {
    version: String,
}

async fn set_default_version(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, req.headers())?;
    let b: DefaultVersion = required_body(&st, req).await?;
    st.registry.set_default_version(&name, &b.version)?;
    Ok(Json(json!({"model": name, "default_version": b.version})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultModel {
    model: String,
}

async fn set_default_model(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, req.headers())?;
    let b: DefaultModel = required_body(&st, req).await?;
    st.registry.set_default_model(&b.model)?;
    Ok(Json(json!({"default_model": b.model})))
}

async fn set_split(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, req.headers())?;
    crate::model::repository::check_name("split", &name).map_err(ApiError::validation)?;
    let split: Split = required_body(&st, req).await?;
    st.registry.set_split(&name, split.clone())?;
    Ok(Json(json!({"split": name, "arms": split.arms})))
}

async fn remove_split(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    st.registry.remove_split(&name)?;
    Ok(Json(json!({"split": name, "status": "removed"})))
}
