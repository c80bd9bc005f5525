//! Admin routes: POST /evaluate (bearer token, compared in constant time; refused when no token is
//! configured), GET /evaluate/{id} (progress and result), POST /evaluate/{id}/cancel (cancel, the
//! job stays readable), DELETE /evaluate/{id} (cancel if running, and delete).
//!
//! Evaluation shares the model with live traffic through the worker's low-priority queue, one batch
//! at a time, so live requests always go first. Small evaluations answer directly; larger ones become
//! jobs (202 + id) so no connection is held for minutes. Evaluations are bounded: at most
//! admin.max_running_evaluations run at once (429 beyond), holdout files are streamed with size and
//! case limits, finished jobs are forgotten after admin.evaluation_ttl_secs (or beyond
//! admin.max_finished_evaluations), an inline evaluation whose client has gone is cancelled, and
//! shutdown cancels everything still running.
use super::body;
use super::config::AdminSection;
use super::error::{ApiError, ErrorBody};
use super::queue::BackgroundJob;
use super::registry::Served;
use super::AppState;
use crate::eval::holdout::{read_cases, HoldoutCase, Provenance, Resolved};
use crate::eval::leakage::{self, LeakageCheck};
use crate::eval::metrics::METRIC_NAMES;
use crate::eval::report::{self, Report};
use crate::eval::{evaluate_with, EvalOptions, EvalResult};
use crate::model::{Query, RankSpec};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use utoipa::ToSchema;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/evaluate", post(start))
        .route("/evaluate/{id}", get(status).delete(delete))
        .route("/evaluate/{id}/cancel", post(cancel))
}

/// Every evaluation known to the server: running ones (inline and jobs) and finished jobs until
/// they expire.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<EvalJob>>>,
    next: AtomicU64,
}

struct EvalJob {
    id: String,
    /// Answered on the request's own connection (forgotten when it finishes).
    inline: AtomicBool,
    total: AtomicUsize,
    done: AtomicUsize,
    cancelled: AtomicBool,
    /// DELETE /evaluate/{id}: gone for callers at once (404), kept in the table only while it
    /// still runs, so admin.max_running_evaluations counts it until it has stopped.
    deleted: AtomicBool,
    state: Mutex<JobState>,
    finished_at: Mutex<Option<Instant>>,
}

#[derive(Clone)]
enum JobState {
    Running,
    Done(serde_json::Value),
    Failed(String),
    Cancelled,
}

impl JobState {
    fn name(&self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done(_) => "done",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl EvalJob {
    fn is_running(&self) -> bool {
        matches!(*self.state.lock().expect("job lock"), JobState::Running)
    }

    fn finish(&self, state: JobState) {
        *self.state.lock().expect("job lock") = state;
        *self.finished_at.lock().expect("job lock") = Some(Instant::now());
    }
}

impl Jobs {
    /// Registers a new running evaluation, or refuses with 429 when admin.max_running_evaluations
    /// already run. Expired finished jobs are forgotten on the way.
    fn admit(&self, st: &AppState) -> Result<Arc<EvalJob>, ApiError> {
        let cfg = &st.cfg.admin;
        let mut jobs = self.jobs.lock().expect("jobs lock");
        forget_expired(&mut jobs, cfg);
        let running = jobs.values().filter(|j| j.is_running()).count();
        if running >= cfg.max_running_evaluations {
            st.metrics.refuse("evaluations_full");
            return Err(ApiError {
                retry_after: Some(5),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "evaluations_full",
                    format!(
                        "{running} evaluations are running (admin.max_running_evaluations); retry when one finishes"
                    ),
                )
            });
        }
        let id = format!("eval-{}", self.next.fetch_add(1, Ordering::SeqCst) + 1);
        let job = Arc::new(EvalJob {
            id: id.clone(),
            inline: AtomicBool::new(true),
            total: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            cancelled: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            state: Mutex::new(JobState::Running),
            finished_at: Mutex::new(None),
        });
        jobs.insert(id, job.clone());
        Ok(job)
    }

    fn forget(&self, id: &str) {
        self.jobs.lock().expect("jobs lock").remove(id);
    }

    fn find(&self, st: &AppState, id: &str) -> Result<Arc<EvalJob>, ApiError> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        forget_expired(&mut jobs, &st.cfg.admin);
        jobs.get(id)
            .filter(|j| !j.inline.load(Ordering::SeqCst) && !j.deleted.load(Ordering::SeqCst))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "evaluation_not_found",
                    format!(
                        "no evaluation {id:?} (finished jobs are kept admin.evaluation_ttl_secs)"
                    ),
                )
            })
    }

    /// Shutdown: every running evaluation stops at its next batch.
    pub fn cancel_all(&self) {
        for j in self.jobs.lock().expect("jobs lock").values() {
            j.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

/// Drops finished jobs older than admin.evaluation_ttl_secs, then the oldest finished ones beyond
/// admin.max_finished_evaluations.
fn forget_expired(jobs: &mut HashMap<String, Arc<EvalJob>>, cfg: &AdminSection) {
    let (ttl, keep) = (
        Duration::from_secs(cfg.evaluation_ttl_secs),
        cfg.max_finished_evaluations,
    );
    let mut finished: Vec<(Instant, String)> = jobs
        .values()
        .filter_map(|j| {
            let at = (*j.finished_at.lock().expect("job lock"))?;
            Some((at, j.id.clone()))
        })
        .collect();
    finished.sort();
    let excess = finished.len().saturating_sub(keep);
    for (i, (at, id)) in finished.iter().enumerate() {
        if i < excess || at.elapsed() >= ttl {
            jobs.remove(id);
        }
    }
}

/// Cancels an inline evaluation when its handler is dropped (the client disconnected) before it
/// answered; disarmed once the evaluation became a background job.
struct CancelOnDrop(Option<Arc<EvalJob>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(j) = self.0.take() {
            j.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelRef {
    model: String,
    version: Option<String>,
}

/// Most models compared in one evaluation.
const MAX_EVALUATED_MODELS: usize = 8;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EvaluateRequest {
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

pub(super) fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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
/// What holdout_path accepts as a name, as the OpenAPI document's pattern: '/'-separated
/// segments, none empty, `.` or `..`.
pub(super) const HOLDOUT_NAME_PATTERN: &str =
    r"^(?:[^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)(?:/(?:[^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))*$";

fn holdout_not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "holdout_not_found", message)
}

fn holdout_path(dir: &Path, name: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(name);
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(ApiError::validation(
            "holdout must be a relative file name inside admin.holdout_dir ('..' and absolute paths are refused)",
        ));
    }
    if dir.as_os_str().is_empty() {
        return Err(holdout_not_found(
            "no admin.holdout_dir is configured: send the cases inline".into(),
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
        .map_err(|_| holdout_not_found(format!("holdout file {name:?} not found")))?;
    if !full.starts_with(&base) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "holdout resolves outside admin.holdout_dir",
        ));
    }
    Ok(full)
}

/// A running evaluation's handle.
#[derive(Serialize, ToSchema)]
pub(super) struct JobAccepted {
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
pub(super) async fn start(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    authorize(&st, req.headers())?;
    st.check_serving()?;
    let bytes = body::read_json_body(&st, req).await?;
    let req: EvaluateRequest = body::parse_then(&st, bytes, Ok).await?;
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
    let max_cases = st.cfg.admin.max_evaluation_cases;
    let source =
        match (&req.holdout, &req.cases) {
            (Some(name), None) => {
                CaseSource::File(holdout_path(&st.cfg.admin.holdout_dir, name)?, name.clone())
            }
            (None, Some(cases)) => {
                if cases.is_empty() {
                    return Err(ApiError::validation("cases must not be empty"));
                }
                if cases.len() > max_cases {
                    return Err(ApiError::validation(format!(
                        "{} cases; the limit is {max_cases} (admin.max_evaluation_cases)",
                        cases.len()
                    )));
                }
                if let Some(i) = cases.iter().position(|c| c.relevant.is_empty()) {
                    return Err(ApiError::validation(format!(
                        "cases[{i}]: relevant must list at least one item"
                    )));
                }
                CaseSource::Inline
            }
            _ => return Err(ApiError::validation(
                "give exactly one of holdout (a file name in admin.holdout_dir) or cases (inline)",
            )),
        };
    // Admission before any file is read: a flood of evaluations must not even read holdouts.
    let job = st.evaluations.admit(&st)?;
    let mut guard = CancelOnDrop(Some(job.clone()));
    let label = match &source {
        CaseSource::File(_, name) => name.clone(),
        CaseSource::Inline => "inline".to_string(),
    };
    let opts = EvalOptions {
        ks: req.k.clone(),
        mask_seen: req.mask_seen,
        // Small background batches: a live request arriving mid-batch waits for at most one of them.
        batch_size: st.cfg.batching.max_batch_size.min(8),
    };
    // One blocking task owns the evaluation from reading its cases to its end, so the job is
    // finished or forgotten whatever happens to this handler (a client that goes away while the
    // holdout is read must not leave a "running" job holding a slot for good). Reading and
    // resolving many cases is CPU and disk work: off the async threads.
    let (loaded_tx, loaded_rx) = oneshot::channel::<Result<bool, ApiError>>();
    let (st2, job2) = (st.clone(), job.clone());
    let allow_leakage = req.allow_leakage;
    let work = tokio::task::spawn_blocking(move || {
        let mut read = Vec::with_capacity(targets.len());
        for served in targets {
            let r = match &source {
                CaseSource::File(path, name) => stream_holdout(&st2, path, name, &served, &job2),
                CaseSource::Inline => {
                    resolve_inline(&served, req.cases.as_deref().unwrap_or_default(), &job2)
                        .map(|r| (r, None))
                }
            }
            .and_then(|(resolved, provenance)| {
                let check = leakage_check(&served, provenance.as_ref(), allow_leakage)?;
                Ok((served, resolved, check))
            });
            match r {
                Ok(t) => read.push(t),
                Err(e) => {
                    st2.evaluations.forget(&job2.id);
                    let _ = loaded_tx.send(Err(e));
                    return JobState::Cancelled;
                }
            }
        }
        let n_cases = read.first().map_or(0, |t| t.1.cases.len());
        job2.total.store(n_cases * read.len(), Ordering::SeqCst);
        let inline = n_cases <= st2.cfg.admin.max_inline_cases;
        job2.inline.store(inline, Ordering::SeqCst);
        let _ = loaded_tx.send(Ok(inline));
        let state = match run_evaluation(&st2, &job2, &read, &opts, &label) {
            Some(Ok(v)) => JobState::Done(v),
            Some(Err(e)) => JobState::Failed(e),
            None => JobState::Cancelled,
        };
        job2.finish(state.clone());
        if inline || job2.deleted.load(Ordering::SeqCst) {
            // Its answer went (or would have gone) to its own connection, or it was deleted:
            // nothing to keep.
            st2.evaluations.forget(&job2.id);
        }
        state
    });
    let inline = loaded_rx
        .await
        .map_err(|_| internal("holdout reading failed"))??;
    let id = job.id.clone();
    if inline {
        let state = work
            .await
            .map_err(|_| internal("evaluation task panicked"))?;
        guard.0 = None;
        return match state {
            JobState::Done(v) => Ok(Json(v).into_response()),
            JobState::Failed(e) => Err(internal(e)),
            JobState::Cancelled | JobState::Running => Err(ApiError::not_ready("shutting down")),
        };
    }
    guard.0 = None;
    let body = JobAccepted {
        status: "running",
        progress_total: job.total.load(Ordering::SeqCst),
        status_url: format!("/evaluate/{id}"),
        id,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

enum CaseSource {
    File(PathBuf, String),
    Inline,
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
        let s = st.registry.exact(m, v.as_deref()).map_err(|mut e| {
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

/// The leakage guard for one model: refused (409) unless `allow`; allowed results are marked.
fn leakage_check(
    served: &Served,
    provenance: Option<&Provenance>,
    allow: bool,
) -> Result<LeakageCheck, ApiError> {
    let mut check = leakage::check(&served.manifest, provenance);
    if check.is_leakage() {
        if !allow {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "leakage",
                format!(
                    "{} (send \"allow_leakage\": true to evaluate anyway; the result is marked)",
                    check.message
                ),
            ));
        }
        check.allowed = true;
        tracing::warn!(model = %served.name, version = %served.version, "{}", check.message);
    }
    Ok(check)
}

fn resolve_inline(
    served: &Served,
    cases: &[HoldoutCase],
    job: &EvalJob,
) -> Result<Resolved, ApiError> {
    let (manifest, catalogue) = (&*served.manifest, &*served.catalogue);
    let mut out = Resolved::default();
    for (i, c) in cases.iter().enumerate() {
        if i % 1024 == 0 && job.cancelled.load(Ordering::SeqCst) {
            return Err(ApiError::not_ready("evaluation cancelled"));
        }
        out.add(manifest, catalogue, c)
            .map_err(|e| ApiError::validation(format!("cases[{i}]: {e}")))?;
    }
    Ok(out)
}

/// Opens a holdout refusing anything but a regular file (a FIFO would block the reader forever;
/// O_NONBLOCK makes the open itself return at once), checks its size, and streams it case by case
/// into resolved cases: memory grows with the resolved cases, never with the file's text.
fn stream_holdout(
    st: &AppState,
    path: &Path,
    name: &str,
    served: &Served,
    job: &EvalJob,
) -> Result<(Resolved, Option<Provenance>), ApiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (manifest, catalogue) = (&*served.manifest, &*served.catalogue);
    let max_bytes = st.cfg.admin.max_holdout_bytes;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| ApiError::validation(format!("cannot open holdout {name:?}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| ApiError::validation(format!("cannot read holdout {name:?}: {e}")))?;
    if !meta.is_file() {
        return Err(ApiError::validation(format!(
            "holdout {name:?} is not a regular file"
        )));
    }
    if meta.len() > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "holdout_too_large",
            format!(
                "holdout {name:?} is {} bytes; the limit is {max_bytes} (admin.max_holdout_bytes)",
                meta.len()
            ),
        ));
    }
    // Bounded even if the file grows while it is read.
    let reader = std::io::BufReader::with_capacity(
        1 << 16,
        std::io::Read::take(file, max_bytes.saturating_add(1)),
    );
    let mut out = Resolved::default();
    let source = Path::new(name);
    let summary = read_cases(
        reader,
        source,
        st.cfg.admin.max_evaluation_cases,
        |line, case| {
            let fail = |message: String| {
                crate::error::DataError::Malformed(crate::error::LineError {
                    path: source.to_path_buf(),
                    line,
                    message,
                })
            };
            if line % 1024 == 0 && job.cancelled.load(Ordering::SeqCst) {
                return Err(fail("evaluation cancelled".into()));
            }
            out.add(manifest, catalogue, &case).map_err(fail)
        },
    )
    .map_err(|e| ApiError::validation(e.to_string()))?;
    Ok((out, summary.provenance))
}

fn internal(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
}

/// Runs on a blocking thread; each batch goes through its model's worker, on the low-priority
/// queue. Gauges are published only once every model is done: a cancelled evaluation leaves
/// nothing behind, and a completed one replaces what an earlier one published for the same model,
/// version and holdout.
fn run_evaluation(
    st: &AppState,
    job: &EvalJob,
    targets: &[(Arc<Served>, Resolved, LeakageCheck)],
    opts: &EvalOptions,
    source: &str,
) -> Option<Result<serde_json::Value, String>> {
    let mut results: Vec<EvalResult> = Vec::with_capacity(targets.len());
    for (i, (served, resolved, _)) in targets.iter().enumerate() {
        let queue = served.queue.clone();
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
        let offset = i * resolved.cases.len();
        let r = evaluate_with(
            &mut rank,
            served.catalogue.len(),
            &resolved.cases,
            opts,
            |d| job.done.store(offset + d, Ordering::SeqCst),
        )?;
        results.push(r);
    }
    // Two versions of one model are told apart by their version.
    let names: Vec<String> = targets
        .iter()
        .map(|(s, _, _)| {
            if targets.iter().filter(|(o, _, _)| o.name == s.name).count() > 1 {
                format!("{}:{}", s.name, s.version)
            } else {
                s.name.clone()
            }
        })
        .collect();
    let comparisons = match report::compare(&names, &results) {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let mut models = Vec::with_capacity(targets.len());
    for ((served, resolved, check), r) in targets.iter().zip(&results) {
        let mut values = Vec::new();
        for (j, k) in r.ks.iter().enumerate() {
            for metric in METRIC_NAMES {
                values.push((metric, *k, r.mean[j].get(metric).unwrap_or(0.0)));
            }
        }
        st.metrics.set_evaluation(
            &served.name,
            &served.version,
            source,
            check.label(),
            &values,
        );
        let mut m =
            report::model_report(&served.name, &served.version, r, resolved.unknown_relevant);
        m.leakage = Some(check.clone());
        models.push(m);
    }
    let rep = Report {
        holdout: source.to_string(),
        cases: targets.first().map_or(0, |t| t.1.cases.len()),
        ks: opts.ks.clone(),
        mask_seen: opts.mask_seen,
        ranking: "full catalogue".into(),
        retrieval: crate::model::retrieval::Retrieval::Exact.name().into(),
        tie_policy: report::TIE_POLICY.into(),
        f1_definition: report::F1_DEFINITION.into(),
        models,
        comparisons,
    };
    Some(serde_json::to_value(&rep).map_err(|e| e.to_string()))
}

/// Cases ranked so far, of all.
#[derive(Serialize, ToSchema)]
pub(super) struct Progress {
    done: usize,
    total: usize,
}

/// An evaluation job: its progress, and its report once done.
#[derive(Serialize, ToSchema)]
pub(super) struct JobStatus {
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
pub(super) async fn status(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<JobStatus>, ApiError> {
    authorize(&st, &headers)?;
    let job = st.evaluations.find(&st, &id)?;
    let state = job.state.lock().expect("job lock").clone();
    let status = state.name();
    let (result, error) = match state {
        JobState::Done(v) => (Some(v), None),
        JobState::Failed(e) => (None, Some(e)),
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
pub(super) struct Cancelled {
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
pub(super) async fn cancel(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers)?;
    let job = st.evaluations.find(&st, &id)?;
    let state = job.state.lock().expect("job lock").clone();
    if matches!(state, JobState::Running) {
        job.cancelled.store(true, Ordering::SeqCst);
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
pub(super) struct Deleted {
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
pub(super) async fn delete(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    authorize(&st, &headers)?;
    let job = st.evaluations.find(&st, &id)?;
    job.cancelled.store(true, Ordering::SeqCst);
    job.deleted.store(true, Ordering::SeqCst);
    let state = job.state.lock().expect("job lock").clone();
    if !matches!(state, JobState::Running) {
        st.evaluations.forget(&job.id);
    }
    Ok(Json(Deleted {
        id: job.id.clone(),
        status: "deleted",
        previous_status: state.name(),
    }))
}
