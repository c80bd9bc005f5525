//! Admin routes: POST /evaluate (bearer token, compared in constant time; refused when no token is
//! configured), GET /evaluate/{id} (progress and result), DELETE /evaluate/{id} (cancel).
//!
//! Evaluation shares the model with live traffic through the worker's low-priority queue, one batch
//! at a time, so live requests always go first. Small evaluations answer directly; larger ones become
//! jobs (202 + id) so no connection is held for minutes.
use super::error::{from_json_rejection, ApiError};
use super::queue::BackgroundJob;
use super::{AppState, Loaded};
use crate::eval::holdout::{parse_holdout, resolve, HoldoutCase};
use crate::eval::metrics::METRIC_NAMES;
use crate::eval::report::{self, Report};
use crate::eval::{evaluate_with, EvalOptions, EvalResult};
use crate::model::{Query, RankSpec};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/evaluate", post(start))
        .route("/evaluate/{id}", get(status).delete(cancel))
}

#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<EvalJob>>>,
    next: AtomicU64,
}

struct EvalJob {
    id: String,
    total: usize,
    done: AtomicUsize,
    cancelled: AtomicBool,
    state: Mutex<JobState>,
}

#[derive(Clone)]
enum JobState {
    Running,
    Done(serde_json::Value),
    Failed(String),
    Cancelled,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateRequest {
    /// A file name inside admin.holdout_dir...
    holdout: Option<String>,
    /// ...or the cases inline.
    cases: Option<Vec<HoldoutCase>>,
    #[serde(default = "default_ks")]
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

fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = &st.cfg.admin.token;
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

/// A holdout name must stay inside the configured directory: relative, no `..`, and no symlink
/// that leads out of it.
fn holdout_path(dir: &Path, name: &str) -> Result<PathBuf, ApiError> {
    if dir.as_os_str().is_empty() {
        return Err(ApiError::validation(
            "no admin.holdout_dir is configured: send the cases inline",
        ));
    }
    let p = Path::new(name);
    if name.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(ApiError::validation(
            "holdout must be a relative file name inside admin.holdout_dir ('..' and absolute paths are refused)",
        ));
    }
    let base = dir.canonicalize().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("admin.holdout_dir is unusable: {e}"),
        )
    })?;
    let full = base
        .join(p)
        .canonicalize()
        .map_err(|_| ApiError::validation(format!("holdout file {name:?} not found")))?;
    if !full.starts_with(&base) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "holdout resolves outside admin.holdout_dir",
        ));
    }
    Ok(full)
}

async fn start(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    payload: Result<Json<EvaluateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers)?;
    let loaded = st.loaded()?;
    let Json(req) = payload.map_err(from_json_rejection)?;
    if req.k.is_empty()
        || req.k.len() > 10
        || req.k.iter().any(|&k| k == 0 || k > st.cfg.limits.max_k)
    {
        return Err(ApiError::validation(format!(
            "k must list 1 to 10 cut-offs between 1 and {} (limits.max_k)",
            st.cfg.limits.max_k
        )));
    }
    let (cases, source) =
        match (req.holdout, req.cases) {
            (Some(name), None) => {
                let path = holdout_path(&st.cfg.admin.holdout_dir, &name)?;
                let label = name.clone();
                let cases = tokio::task::spawn_blocking(move || {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        ApiError::validation(format!("cannot read holdout {label:?}: {e}"))
                    })?;
                    parse_holdout(&text, Path::new(&label))
                        .map_err(|e| ApiError::validation(e.to_string()))
                })
                .await
                .map_err(|_| internal("holdout parsing panicked"))??;
                (cases, name)
            }
            (None, Some(cases)) => {
                if cases.is_empty() {
                    return Err(ApiError::validation("cases must not be empty"));
                }
                if let Some(i) = cases.iter().position(|c| c.relevant.is_empty()) {
                    return Err(ApiError::validation(format!(
                        "cases[{i}]: relevant must list at least one item"
                    )));
                }
                (cases, "inline".to_string())
            }
            _ => return Err(ApiError::validation(
                "give exactly one of holdout (a file name in admin.holdout_dir) or cases (inline)",
            )),
        };
    // Resolving many cases is CPU work: keep it off the async threads.
    let (manifest, catalogue) = (loaded.manifest.clone(), loaded.catalogue.clone());
    let resolved = tokio::task::spawn_blocking(move || resolve(&manifest, &catalogue, &cases))
        .await
        .map_err(|_| internal("holdout resolution panicked"))?
        .map_err(ApiError::validation)?;
    let opts = EvalOptions {
        ks: req.k,
        mask_seen: req.mask_seen,
        // Small background batches: a live request arriving mid-batch waits for at most one of them.
        batch_size: st.cfg.batching.max_batch_size.min(8),
    };
    let id = format!(
        "eval-{}",
        st.evaluations.next.fetch_add(1, Ordering::SeqCst) + 1
    );
    let job = Arc::new(EvalJob {
        id: id.clone(),
        total: resolved.cases.len(),
        done: AtomicUsize::new(0),
        cancelled: AtomicBool::new(false),
        state: Mutex::new(JobState::Running),
    });
    let inline = resolved.cases.len() <= st.cfg.admin.max_inline_cases;
    if !inline {
        st.evaluations
            .jobs
            .lock()
            .expect("jobs lock")
            .insert(id.clone(), job.clone());
    }
    let (st2, job2) = (st.clone(), job.clone());
    let work = tokio::task::spawn_blocking(move || {
        let loaded = st2.loaded.get().expect("loaded before evaluation");
        let outcome = run_evaluation(
            &st2,
            loaded,
            &job2,
            &resolved.cases,
            &opts,
            resolved.unknown_relevant,
            &source,
        );
        let state = match outcome {
            Some(Ok(v)) => JobState::Done(v),
            Some(Err(e)) => JobState::Failed(e),
            None => JobState::Cancelled,
        };
        *job2.state.lock().expect("job lock") = state.clone();
        state
    });
    if inline {
        return match work
            .await
            .map_err(|_| internal("evaluation task panicked"))?
        {
            JobState::Done(v) => Ok(Json(v).into_response()),
            JobState::Failed(e) => Err(internal(e)),
            JobState::Cancelled | JobState::Running => Err(ApiError::not_ready("shutting down")),
        };
    }
    let body = serde_json::json!({
        "id": id, "status": "running", "cases": job.total, "status_url": format!("/evaluate/{id}"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn internal(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
}

/// Runs on a blocking thread; each batch goes through the worker's low-priority queue.
fn run_evaluation(
    st: &AppState,
    loaded: &Loaded,
    job: &EvalJob,
    cases: &[crate::eval::EvalCase],
    opts: &EvalOptions,
    unknown_relevant: usize,
    source: &str,
) -> Option<Result<serde_json::Value, String>> {
    let queue = loaded.queue.clone();
    let mut rank = |q: &[&Query], s: &[RankSpec]| -> Option<Vec<Vec<(usize, f32)>>> {
        if job.cancelled.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        queue
            .submit_background(BackgroundJob {
                enqueued: std::time::Instant::now(),
                queries: q.iter().map(|x| (*x).clone()).collect(),
                specs: s.to_vec(),
                reply: tx,
            })
            .ok()?;
        rx.blocking_recv().ok()
    };
    let result: EvalResult = evaluate_with(&mut rank, loaded.catalogue.len(), cases, opts, |d| {
        job.done.store(d, Ordering::SeqCst)
    })?;
    let m = &loaded.manifest;
    for (j, k) in result.ks.iter().enumerate() {
        for metric in METRIC_NAMES {
            st.metrics
                .eval_metric
                .with_label_values(&[&m.name, &m.version, metric, &k.to_string()])
                .set(result.mean[j].get(metric).unwrap_or(0.0));
        }
    }
    let rep = Report {
        holdout: source.to_string(),
        cases: cases.len(),
        ks: opts.ks.clone(),
        mask_seen: opts.mask_seen,
        ranking: "full catalogue".into(),
        tie_policy: report::TIE_POLICY.into(),
        f1_definition: report::F1_DEFINITION.into(),
        models: vec![report::model_report(
            &m.name,
            &m.version,
            &result,
            unknown_relevant,
        )],
        comparisons: Vec::new(),
    };
    Some(serde_json::to_value(&rep).map_err(|e| e.to_string()))
}

fn find(st: &AppState, id: &str) -> Result<Arc<EvalJob>, ApiError> {
    st.evaluations
        .jobs
        .lock()
        .expect("jobs lock")
        .get(id)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no evaluation {id:?}"),
            )
        })
}

async fn status(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers)?;
    let job = find(&st, &id)?;
    let state = job.state.lock().expect("job lock").clone();
    let (status, extra) = match state {
        JobState::Running => ("running", serde_json::Value::Null),
        JobState::Done(v) => ("done", v),
        JobState::Failed(e) => ("failed", serde_json::json!(e)),
        JobState::Cancelled => ("cancelled", serde_json::Value::Null),
    };
    Ok(Json(serde_json::json!({
        "id": job.id, "status": status,
        "progress": {"done": job.done.load(Ordering::SeqCst), "total": job.total},
        "result": if status == "done" { extra.clone() } else { serde_json::Value::Null },
        "error": if status == "failed" { extra } else { serde_json::Value::Null },
    })))
}

async fn cancel(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers)?;
    let job = find(&st, &id)?;
    job.cancelled.store(true, Ordering::SeqCst);
    Ok(Json(
        serde_json::json!({"id": job.id, "status": "cancelling"}),
    ))
}
