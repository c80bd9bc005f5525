//! Model routes (the route table is in `http::router`). Public discovery: `GET /models`, `GET /models/{name}` and the KServe v2 model
//! routes (`/v2/models/{name}`, `…/ready`, `…/versions/{v}`, `…/versions/{v}/ready`). Admin
//! management (bearer token; TorchServe's management API is the model): load a version beside what
//! serves, switch a model's default version, unload, set the default model, and A/B splits.
use crate::serve::http::body;
use crate::serve::http::error::{ApiError, ErrorBody};
use crate::serve::http::middleware::{Serving, UrlPath};
use crate::serve::http::state::AppState;
use crate::serve::registry::ab_split::{AbSplit, Arm};
use crate::serve::registry::{LoadEvent, Served, Snapshot};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// The training record without its per-epoch log (which can be long): how and on what.
#[derive(Serialize, ToSchema)]
pub struct TrainingSummary {
    data: Vec<String>,
    log_sha256: Option<String>,
    split: String,
    seed: u64,
    epochs_run: usize,
    best_epoch: usize,
    selection_metric: String,
    stopped_by: Option<String>,
    wall_time_seconds: f64,
    command: String,
}

/// The name and version the version's own manifest gives (a repository may file it otherwise).
#[derive(Serialize, ToSchema)]
pub struct ManifestName {
    name: String,
    version: String,
}

/// One loaded version: where it runs, what it reads, how it was trained and what it scored.
#[derive(Serialize, ToSchema)]
pub struct VersionInfo {
    name: String,
    version: String,
    /// Whether requests without a version go here.
    default: bool,
    /// Always "ready": a version is listed once it is loaded and warm.
    state: &'static str,
    device: String,
    /// "exact" or "ann".
    retrieval: String,
    intra_op_threads: usize,
    /// Worker threads ranking for this version (`batching.workers_per_model`, or 1 where its
    /// retrieval cannot rank on several threads at once), each with `intra_op_threads`.
    workers: usize,
    queue_depth: usize,
    loaded_at_unix: u64,
    load_seconds: f64,
    path: String,
    manifest: ManifestName,
    n_items: usize,
    max_len: usize,
    architecture: crate::model::Architecture,
    behaviours: Vec<String>,
    context: Vec<crate::model::ContextFeature>,
    training: Option<TrainingSummary>,
    metrics: Option<crate::model::manifest::MetricsRecord>,
}

fn describe_version(s: &Served, is_default: bool) -> VersionInfo {
    let m = &s.manifest;
    let a = &m.architecture;
    VersionInfo {
        name: s.name.clone(),
        version: s.version.clone(),
        default: is_default,
        state: "ready",
        device: s.device.clone(),
        retrieval: s.retrieval.to_string(),
        intra_op_threads: s.threads,
        workers: s.workers,
        queue_depth: s.queue.depth(),
        loaded_at_unix: s.loaded_at_unix,
        load_seconds: s.load_seconds,
        path: s.path.display().to_string(),
        manifest: ManifestName {
            name: m.name.clone(),
            version: m.version.clone(),
        },
        n_items: a.n_items,
        max_len: a.max_len,
        architecture: a.clone(),
        behaviours: m.behaviours.clone(),
        context: m.context.clone(),
        training: m.training.as_ref().map(|t| TrainingSummary {
            data: t.data.clone(),
            log_sha256: t.log_sha256.clone(),
            split: t.split.to_string(),
            seed: t.seed,
            epochs_run: t.epochs_run,
            best_epoch: t.best_epoch,
            selection_metric: t.selection_metric.clone(),
            stopped_by: t.stopped_by.clone(),
            wall_time_seconds: t.wall_time_seconds,
            command: t.command.clone(),
        }),
        metrics: m.metrics.clone(),
    }
}

/// One model: its versions loaded, on disk, draining, and what happened to its loads.
#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    name: String,
    default_version: String,
    versions: Vec<VersionInfo>,
    /// Versions in the repository (loaded or not); empty without a repository.
    repository_versions: Vec<String>,
    /// Unloaded versions whose queues are still finishing.
    draining_versions: Vec<String>,
    load_events: Vec<LoadEvent>,
}

fn describe_model(
    st: &AppState,
    name: &str,
    default_version: &str,
    versions: &[Arc<Served>],
) -> ModelInfo {
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
    ModelInfo {
        name: name.to_string(),
        default_version: default_version.to_string(),
        versions: versions
            .iter()
            .map(|s| describe_version(s, s.version == default_version))
            .collect(),
        repository_versions: on_disk,
        draining_versions: draining,
        load_events: events,
    }
}

/// Every model served, the default model and the A/B splits.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    default_model: String,
    models: Vec<ModelInfo>,
    splits: BTreeMap<String, AbSplit>,
    /// Failures of models that have no version loaded at all.
    load_events_of_unloaded_models: Vec<LoadEvent>,
}

/// Lists every model served, with its versions, the default model and the splits.
#[utoipa::path(get, path = "/models", operation_id = "list_models", tag = "models",
    responses((status = 200, description = "Models, versions, splits", body = ModelList)))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    _: Serving,
) -> Result<Json<ModelList>, ApiError> {
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
    Ok(Json(ModelList {
        default_model,
        models: models
            .iter()
            .map(|(n, d, v)| describe_model(&st, n, d, v))
            .collect(),
        splits,
        load_events_of_unloaded_models: failed,
    }))
}

/// A split named like a model: its arms.
#[derive(Serialize, ToSchema)]
pub struct SplitInfo {
    name: String,
    split: AbSplit,
}

/// A model, or a split of that name.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ModelOrSplit {
    Model(ModelInfo),
    Split(SplitInfo),
}

/// One model (its versions and load history), or the split of that name.
#[utoipa::path(get, path = "/models/{name}", operation_id = "get_model", tag = "models",
    params(("name" = String, Path, description = "A model or split name")),
    responses(
        (status = 200, description = "The model, or the split", body = ModelOrSplit),
        (status = 404, description = "No model or split of that name", body = ErrorBody),
    ))]
pub async fn one(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    _: Serving,
) -> Result<Json<ModelOrSplit>, ApiError> {
    let snap = st.registry.snapshot();
    if let Some((n, d, v)) = snap.models.iter().find(|(n, _, _)| *n == name) {
        return Ok(Json(ModelOrSplit::Model(describe_model(&st, n, d, v))));
    }
    if let Some(s) = snap.splits.get(&name) {
        return Ok(Json(ModelOrSplit::Split(SplitInfo {
            name,
            split: s.clone(),
        })));
    }
    Err(ApiError::not_found(
        "model_not_found",
        format!("no model or split {name:?} is loaded"),
    ))
}

/// A KServe v2 tensor description.
#[derive(Serialize, ToSchema)]
pub struct V2Tensor {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
}

/// KServe v2 model metadata.
#[derive(Serialize, ToSchema)]
pub struct V2Metadata {
    name: String,
    versions: Vec<String>,
    platform: &'static str,
    inputs: Vec<V2Tensor>,
    outputs: Vec<V2Tensor>,
}

/// The tensors POST /v2/models/{name}/infer reads and answers (`handlers::v2_infer`): -1 is a
/// dimension of any size (batch, history length, k).
fn v2_body(s: &Served, versions: Vec<String>) -> V2Metadata {
    let t = |name, datatype, shape: &[i64]| V2Tensor {
        name,
        datatype,
        shape: shape.to_vec(),
    };
    V2Metadata {
        name: s.name.clone(),
        versions,
        platform: "seqserve_libtorch",
        inputs: vec![
            t("history", "BYTES", &[-1, -1]),
            t("context", "BYTES", &[-1]),
        ],
        outputs: vec![
            t("items", "BYTES", &[-1, -1]),
            t("scores", "FP32", &[-1, -1]),
        ],
    }
}

/// KServe v2 model metadata (the default version, and every loaded version's name).
#[utoipa::path(get, path = "/v2/models/{name}", operation_id = "v2_model_metadata", tag = "models",
    params(("name" = String, Path, description = "A model name")),
    responses(
        (status = 200, description = "Model metadata", body = V2Metadata),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
pub async fn v2_metadata(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    _: Serving,
) -> Result<Json<V2Metadata>, ApiError> {
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

/// KServe v2 metadata of one loaded version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", operation_id = "v2_version_metadata", tag = "models",
    params(("name" = String, Path, description = "A model name"),
           ("version" = String, Path, description = "A loaded version")),
    responses(
        (status = 200, description = "Version metadata", body = V2Metadata),
        (status = 404, description = "No such model or version", body = ErrorBody),
    ))]
pub async fn v2_version(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    _: Serving,
) -> Result<Json<V2Metadata>, ApiError> {
    let s = st.registry.exact(&name, Some(&version))?;
    Ok(Json(v2_body(&s, vec![version])))
}

/// KServe v2 readiness of a model or version.
#[derive(Serialize, ToSchema)]
pub struct V2Ready {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// 200 `{"name", "ready": true}` when the model (version) can answer now; 404 for an unknown one;
/// 503 while the server is starting or shutting down.
fn v2_ready_answer(st: &AppState, name: &str, version: Option<&str>) -> Response {
    if let Err(e) = st.serving() {
        let body = V2Ready {
            name: name.to_string(),
            version: None,
            ready: false,
            error: Some(e.message),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    match st.registry.exact(name, version) {
        Ok(s) => Json(V2Ready {
            name: s.name.clone(),
            version: Some(s.version.clone()),
            ready: true,
            error: None,
        })
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// KServe v2 readiness of a model's default version.
#[utoipa::path(get, path = "/v2/models/{name}/ready", operation_id = "v2_model_ready", tag = "models",
    params(("name" = String, Path, description = "A model name")),
    responses(
        (status = 200, description = "The model can answer now", body = V2Ready),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 503, description = "The server is starting or shutting down", body = V2Ready),
    ))]
pub async fn v2_ready(State(st): State<Arc<AppState>>, UrlPath(name): UrlPath<String>) -> Response {
    v2_ready_answer(&st, &name, None)
}

/// KServe v2 readiness of one version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", operation_id = "v2_version_ready", tag = "models",
    params(("name" = String, Path, description = "A model name"),
           ("version" = String, Path, description = "A version")),
    responses(
        (status = 200, description = "The version can answer now", body = V2Ready),
        (status = 404, description = "No such model or version", body = ErrorBody),
        (status = 503, description = "The server is starting or shutting down", body = V2Ready),
    ))]
pub async fn v2_version_ready(
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
    let bytes = body::read_json_body(st, req).await?;
    body::parse(st, bytes).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadOptions {
    /// Make it the model's default version once it is warm (the swap).
    #[serde(default)]
    default: bool,
    /// With `default`: unload the version that was the default, after its queue drains.
    #[serde(default)]
    retire_previous: bool,
}

/// Loads and warms up a version beside what serves (`latest` = the repository's newest), then
/// applies the options; a version that fails to load changes nothing.
#[utoipa::path(post, path = "/models/{name}/versions/{version}", operation_id = "load_version", tag = "models",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "A model name in model.repository"),
           ("version" = String, Path, description = "A version directory, or `latest`")),
    request_body(content = LoadOptions, description = "Optional; absent: load without switching"),
    responses(
        (status = 201, description = "Loaded and warm", body = VersionInfo),
        (status = 200, description = "Already loaded (options applied)", body = VersionInfo),
        (status = 404, description = "No such model or version on disk", body = ErrorBody),
        (status = 409, description = "No model.repository is configured", body = ErrorBody),
        (status = 422, description = "The version failed to load (the reason), or bad options", body = ErrorBody),
    ))]
pub async fn load(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    _: Serving,
    req: Request,
) -> Result<Response, ApiError> {
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
    .map_err(|_| ApiError::internal("load task failed"))??;
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

/// What an admin change did.
#[derive(Serialize, ToSchema)]
pub struct Unloading {
    model: String,
    version: String,
    /// "unloading".
    status: &'static str,
    message: &'static str,
}

/// Removes a version from routing at once; requests already queued on it finish there, then its
/// memory is freed.
#[utoipa::path(delete, path = "/models/{name}/versions/{version}", operation_id = "unload_version", tag = "models",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "A model name"),
           ("version" = String, Path, description = "A loaded version")),
    responses(
        (status = 200, description = "Removed from routing", body = Unloading),
        (status = 404, description = "No such model or version loaded", body = ErrorBody),
        (status = 409, description = "The default version while others are loaded, the default model's last version, or a split's arm", body = ErrorBody),
    ))]
pub async fn unload(
    State(st): State<Arc<AppState>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    _: Serving,
) -> Result<Json<Unloading>, ApiError> {
    st.registry.unload(&name, &version)?;
    Ok(Json(Unloading {
        model: name,
        version,
        status: "unloading",
        message: "removed from routing; requests already queued on it finish there, then its memory is freed",
    }))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultVersion {
    /// A loaded version of the model.
    version: String,
}

/// The model and its new default version.
#[derive(Serialize, ToSchema)]
pub struct DefaultVersionSet {
    model: String,
    default_version: String,
}

/// Switches which loaded version answers requests without a version (atomically).
#[utoipa::path(put, path = "/models/{name}/default", operation_id = "set_default_version", tag = "models",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "A model name")),
    request_body = DefaultVersion,
    responses(
        (status = 200, description = "Switched", body = DefaultVersionSet),
        (status = 404, description = "No such model or version loaded", body = ErrorBody),
    ))]
pub async fn set_default_version(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    _: Serving,
    req: Request,
) -> Result<Json<DefaultVersionSet>, ApiError> {
    let b: DefaultVersion = required_body(&st, req).await?;
    st.registry.set_default_version(&name, &b.version)?;
    Ok(Json(DefaultVersionSet {
        model: name,
        default_version: b.version,
    }))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultModel {
    /// A loaded model (or split) name.
    model: String,
}

/// The model that answers requests without a model.
#[derive(Serialize, ToSchema)]
pub struct DefaultModelSet {
    default_model: String,
}

/// Switches which model answers requests that name none.
#[utoipa::path(put, path = "/default", operation_id = "set_default_model", tag = "models",
    security(("admin_token" = [])),
    request_body = DefaultModel,
    responses(
        (status = 200, description = "Switched", body = DefaultModelSet),
        (status = 404, description = "No such model loaded", body = ErrorBody),
    ))]
pub async fn set_default_model(
    State(st): State<Arc<AppState>>,
    _: Serving,
    req: Request,
) -> Result<Json<DefaultModelSet>, ApiError> {
    let b: DefaultModel = required_body(&st, req).await?;
    st.registry.set_default_model(&b.model)?;
    Ok(Json(DefaultModelSet {
        default_model: b.model,
    }))
}

/// A split as set.
#[derive(Serialize, ToSchema)]
pub struct SplitSet {
    split: String,
    arms: Vec<Arm>,
}

/// Creates or replaces an A/B split: requests naming it are shared between its arms by weight,
/// sticky per `user`.
#[utoipa::path(put, path = "/splits/{name}", operation_id = "set_split", tag = "models",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The split's name (1-64 of A-Z a-z 0-9 . _ -)")),
    request_body = AbSplit,
    responses(
        (status = 200, description = "Set", body = SplitSet),
        (status = 404, description = "An arm names no loaded model or version", body = ErrorBody),
        (status = 409, description = "The name is a model's", body = ErrorBody),
    ))]
pub async fn set_split(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    _: Serving,
    req: Request,
) -> Result<Json<SplitSet>, ApiError> {
    crate::model::repository::check_name("split", &name).map_err(ApiError::validation)?;
    let split: AbSplit = required_body(&st, req).await?;
    st.registry.set_split(&name, split.clone())?;
    Ok(Json(SplitSet {
        split: name,
        arms: split.arms,
    }))
}

/// A removed split.
#[derive(Serialize, ToSchema)]
pub struct SplitRemoved {
    split: String,
    /// "removed".
    status: &'static str,
}

/// Removes an A/B split.
#[utoipa::path(delete, path = "/splits/{name}", operation_id = "remove_split", tag = "models",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "A split name")),
    responses(
        (status = 200, description = "Removed", body = SplitRemoved),
        (status = 404, description = "No such split", body = ErrorBody),
    ))]
pub async fn remove_split(
    State(st): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    _: Serving,
) -> Result<Json<SplitRemoved>, ApiError> {
    st.registry.remove_split(&name)?;
    Ok(Json(SplitRemoved {
        split: name,
        status: "removed",
    }))
}
