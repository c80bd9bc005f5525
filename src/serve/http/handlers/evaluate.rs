//! The evaluation routes (admin: bearer token): POST /evaluate (start; small evaluations answer
//! with the report, larger ones become jobs), GET /evaluate/{id} (progress and result), POST
//! /evaluate/{id}/cancel (cancel, the job stays readable), DELETE /evaluate/{id} (cancel if
//! running, and delete). The work itself is `serve::evaluation`'s.
use crate::eval::holdout::HoldoutCase;
use crate::eval::report::Report;
use crate::serve::evaluation::cases::CaseSource;
use crate::serve::evaluation::jobs::EvalStatus;
use crate::serve::evaluation::{Plan, Started};
use crate::serve::http::body;
use crate::serve::http::error::{ApiError, ErrorBody};
use crate::serve::http::middleware::{Serving, UrlPath};
use crate::serve::http::state::AppState;
use crate::serve::registry::Served;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    model: String,
    version: Option<String>,
}

/// Most models compared in one evaluation.
const MAX_EVALUATED_MODELS: usize = 8;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// One model (its default version unless `version`)...
    model: Option<String>,
    version: Option<String>,
    /// ...or several, compared pairwise on the same cases. Neither: the default model.
    #[schema(min_items = 1, max_items = 8)]
    models: Option<Vec<ModelRef>>,
    /// Evaluate even when the holdout overlaps a model's training data (the result is marked).
    #[serde(default)]
    allow_leakage: bool,
    /// A file name inside admin.holdout_dir...
    holdout: Option<String>,
    /// ...or the cases inline.
    #[schema(min_items = 1)]
    cases: Option<Vec<HoldoutCase>>,
    /// Cut-offs (1 to 10 of them), each at most limits.max_k.
    #[serde(default = "default_ks", deserialize_with = "crate::model::integers")]
    #[schema(min_items = 1, max_items = 10)]
    k: Vec<usize>,
    #[serde(default = "yes")]
    mask_seen: bool,
}

fn default_ks() -> Vec<usize> {
    vec![5, 10, 20]
}

fn yes() -> bool {
    true
}

/// A running evaluation's handle.
#[derive(Serialize, ToSchema)]
pub struct JobAccepted {
    id: String,
    /// "running".
    status: &'static str,
    /// Cases times models to rank.
    progress_total: usize,
    /// GET it for progress and the result.
    status_url: String,
}

/// Evaluates one or more models on a holdout (a file in admin.holdout_dir, or cases inline):
/// every metric at every K with 95% bootstrap CIs and, with several models, paired tests.
/// Small evaluations answer with the report; larger ones become jobs (202).
#[utoipa::path(post, path = "/evaluate", operation_id = "start_evaluation", tag = "evaluation",
    security(("admin_token" = [])),
    request_body = EvaluateRequest,
    responses(
        (status = 200, description = "The report", body = Report),
        (status = 202, description = "Started as a job: poll status_url", body = JobAccepted),
        (status = 404, description = "A named model or version is not loaded", body = ErrorBody),
        (status = 409, description = "The holdout overlaps a model's training data (allow_leakage to go on)", body = ErrorBody),
        (status = 429, description = "admin.max_running_evaluations are running", body = ErrorBody),
    ))]
pub async fn start(
    State(st): State<Arc<AppState>>,
    _: Serving,
    req: Request,
) -> Result<Response, ApiError> {
    let bytes = body::read_json_body(&st, req).await?;
    let req: EvaluateRequest = body::parse(&st, bytes).await?;
    let targets = evaluated_models(&st, &req)?;
    if req.k.is_empty()
        || req.k.len() > 10
        || req.k.iter().any(|&k| k == 0 || k > st.cfg.limits.max_k)
    {
        return Err(ApiError::validation(format!(
            "k must list 1 to 10 cut-offs between 1 and {} (limits.max_k)",
            st.cfg.limits.max_k
        )));
    }
    let source = CaseSource::from_request(&st.cfg.admin, req.holdout, req.cases)?;
    let plan = Plan {
        targets,
        source,
        ks: req.k,
        mask_seen: req.mask_seen,
        allow_leakage: req.allow_leakage,
    };
    match st.evaluations.start(plan).await.inspect_err(|e| {
        if matches!(e, crate::serve::evaluation::EvalError::Busy(_)) {
            st.metrics.refuse("evaluations_full");
        }
    })? {
        Started::Report(v) => Ok(Json(v).into_response()),
        Started::Job { id, total } => {
            let body = JobAccepted {
                status: "running",
                progress_total: total,
                status_url: format!("/evaluate/{id}"),
                id,
            };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
    }
}

/// The versions an evaluation names (`model`/`version` or `models`), each loaded; none named: the
/// default model's default version.
fn evaluated_models(st: &AppState, req: &EvaluateRequest) -> Result<Vec<Arc<Served>>, ApiError> {
    let refs: Vec<(String, Option<String>)> = match (&req.model, &req.models) {
        (Some(m), None) => vec![(m.clone(), req.version.clone())],
        (None, Some(ms)) if req.version.is_none() => {
            if ms.is_empty() || ms.len() > MAX_EVALUATED_MODELS {
                return Err(ApiError::validation(format!(
                    "models must list 1 to {MAX_EVALUATED_MODELS} models"
                )));
            }
            ms.iter()
                .map(|m| (m.model.clone(), m.version.clone()))
                .collect()
        }
        (None, None) if req.version.is_none() => vec![(st.registry.default_model(), None)],
        _ => {
            return Err(ApiError::validation(
                "give model (and optionally version) or models, not both; version needs model",
            ))
        }
    };
    let mut out: Vec<Arc<Served>> = Vec::with_capacity(refs.len());
    for (i, (m, v)) in refs.iter().enumerate() {
        let s = st.registry.exact(m, v.as_deref()).map_err(|e| {
            let mut e = ApiError::from(e);
            if refs.len() > 1 {
                e.message = format!("models[{i}]: {}", e.message);
            }
            e
        })?;
        if out
            .iter()
            .any(|o| o.name == s.name && o.version == s.version)
        {
            return Err(ApiError::validation(format!(
                "models[{i}]: {} {} is listed twice",
                s.name, s.version
            )));
        }
        out.push(s);
    }
    Ok(out)
}

/// Cases ranked so far, of all.
#[derive(Serialize, ToSchema)]
pub struct Progress {
    done: usize,
    total: usize,
}

/// An evaluation job: its progress, and its report once done.
#[derive(Serialize, ToSchema)]
pub struct JobStatus {
    id: String,
    /// running, done, failed or cancelled.
    status: &'static str,
    progress: Progress,
    /// The report, when done.
    #[schema(value_type = Option<Report>)]
    result: Option<serde_json::Value>,
    /// Why it failed, when it did.
    error: Option<String>,
}

/// A job's progress, and its report once done.
#[utoipa::path(get, path = "/evaluate/{id}", operation_id = "get_evaluation", tag = "evaluation",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The id POST /evaluate gave")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 404, description = "No such job (or it expired)", body = ErrorBody),
    ))]
pub async fn status(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job = st.evaluations.find(&id)?;
    let state = job.status();
    let status = state.name();
    let (result, error) = match state {
        EvalStatus::Done(v) => (Some(v), None),
        EvalStatus::Failed(e) => (None, Some(e)),
        _ => (None, None),
    };
    Ok(Json(JobStatus {
        id: job.id.clone(),
        status,
        progress: Progress {
            done: job.done.load(Ordering::SeqCst),
            total: job.total.load(Ordering::SeqCst),
        },
        result,
        error,
    }))
}

/// What cancelling did.
#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    id: String,
    /// "cancelling", or the finished job's status.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Cancels a running job (202, "cancelling"), which stays readable (GET shows "cancelled" once it
/// has stopped); a finished one is left as it is and the answer says what it is (200).
#[utoipa::path(post, path = "/evaluate/{id}/cancel", operation_id = "cancel_evaluation", tag = "evaluation",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The id POST /evaluate gave")),
    responses(
        (status = 202, description = "Cancelling", body = Cancelled),
        (status = 200, description = "Already finished: nothing to cancel", body = Cancelled),
        (status = 404, description = "No such job (or it expired)", body = ErrorBody),
    ))]
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (job, state, cancelling) = st.evaluations.cancel(&id)?;
    if cancelling {
        let body = Cancelled {
            id: job.id.clone(),
            status: "cancelling",
            message: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    Ok(Json(Cancelled {
        id: job.id.clone(),
        status: state.name(),
        message: Some(format!(
            "evaluation already {}; nothing to cancel",
            state.name()
        )),
    })
    .into_response())
}

/// A deleted evaluation.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    id: String,
    /// "deleted".
    status: &'static str,
    /// What it was: running (now cancelled), done, failed or cancelled.
    previous_status: &'static str,
}

/// Deletes a job: cancelled if it runs, and gone at once (GET answers 404 from now on).
#[utoipa::path(delete, path = "/evaluate/{id}", operation_id = "delete_evaluation", tag = "evaluation",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The id POST /evaluate gave")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 404, description = "No such job (or it expired, or was deleted)", body = ErrorBody),
    ))]
pub async fn delete(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    let (job, state) = st.evaluations.delete(&id)?;
    Ok(Json(Deleted {
        id: job.id.clone(),
        status: "deleted",
        previous_status: state.name(),
    }))
}
