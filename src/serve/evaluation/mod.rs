//! Evaluations run by the server (the admin routes `/evaluate`): one or more loaded versions
//! ranked on a holdout file or inline cases, through their workers' low-priority queues, one
//! batch at a time, so live requests always go first. Small evaluations answer on their own
//! connection; larger ones become jobs so no connection is held for minutes.
//!
//! Bounded throughout: at most admin.max_running_evaluations run at once (`jobs`), holdout files
//! are sandboxed and streamed with size and case limits (`cases`), finished jobs expire, an inline
//! evaluation whose client has gone is cancelled, and shutdown cancels everything still running.
pub mod cases;
pub mod error;
pub mod jobs;
pub mod run;

use crate::eval::EvalOptions;
use crate::serve::config::AdminSection;
use crate::serve::registry::Served;
use crate::serve::telemetry::Metrics;
use cases::CaseSource;
pub use error::EvalError;
use jobs::{CancelOnDrop, EvalJob, EvalStatus, Jobs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What to evaluate: versions (already resolved), cases, cut-offs.
pub struct Plan {
    pub targets: Vec<Arc<Served>>,
    pub source: CaseSource,
    pub ks: Vec<usize>,
    pub mask_seen: bool,
    pub allow_leakage: bool,
}

/// How an evaluation answered.
pub enum Started {
    /// Small enough to answer at once: the report.
    Report(serde_json::Value),
    /// A job: poll it by id.
    Job { id: String, total: usize },
}

/// The server's evaluations: the job table and what running one needs.
pub struct Evaluations {
    pub jobs: Jobs,
    cfg: AdminSection,
    metrics: Arc<Metrics>,
    /// Ranking batch size: small, so a live request arriving mid-batch waits for at most one.
    batch_size: usize,
}

impl Evaluations {
    pub fn new(cfg: AdminSection, metrics: Arc<Metrics>, max_batch_size: usize) -> Evaluations {
        Evaluations {
            jobs: Jobs::default(),
            cfg,
            metrics,
            batch_size: max_batch_size.min(8),
        }
    }

    pub fn config(&self) -> &AdminSection {
        &self.cfg
    }

    /// Starts an evaluation: admitted first (before any file is read: a flood of evaluations
    /// must not even read holdouts), then one blocking task owns it from reading its cases to its
    /// end, so the job is finished or forgotten whatever happens to the caller (a client that goes
    /// away while the holdout is read must not leave a "running" job holding a slot for good).
    /// Reading and resolving many cases is CPU and disk work: off the async threads. Dropping the
    /// returned future before it resolves cancels an inline evaluation.
    pub async fn start(self: &Arc<Self>, plan: Plan) -> Result<Started, EvalError> {
        let job = self.jobs.admit(&self.cfg)?;
        let mut guard = CancelOnDrop(Some(job.clone()));
        let opts = EvalOptions {
            ks: crate::eval::unique_cut_offs(&plan.ks),
            mask_seen: plan.mask_seen,
            batch_size: self.batch_size,
        };
        let (loaded_tx, loaded_rx) = oneshot::channel::<Result<bool, EvalError>>();
        let (me, job2) = (self.clone(), job.clone());
        let work = tokio::task::spawn_blocking(move || me.own(&job2, plan, &opts, loaded_tx));
        let inline = loaded_rx
            .await
            .map_err(|_| EvalError::Internal("holdout reading failed".into()))??;
        if inline {
            let status = work
                .await
                .map_err(|_| EvalError::Internal("evaluation task panicked".into()))?;
            guard.0 = None;
            return match status {
                EvalStatus::Done(v) => Ok(Started::Report(v)),
                EvalStatus::Failed(e) => Err(EvalError::Internal(e)),
                EvalStatus::Cancelled | EvalStatus::Running => Err(EvalError::ShuttingDown),
            };
        }
        guard.0 = None;
        Ok(Started::Job {
            id: job.id.clone(),
            total: job.total.load(Ordering::SeqCst),
        })
    }

    /// The blocking task of one evaluation: reads its cases (telling `loaded` whether it answers
    /// inline, or why it cannot run), ranks them, records how it ended.
    fn own(
        &self,
        job: &EvalJob,
        plan: Plan,
        opts: &EvalOptions,
        loaded: oneshot::Sender<Result<bool, EvalError>>,
    ) -> EvalStatus {
        let mut read = Vec::with_capacity(plan.targets.len());
        for served in plan.targets {
            let r =
                plan.source
                    .resolve(&self.cfg, &served, job)
                    .and_then(|(resolved, provenance)| {
                        let check =
                            run::leakage_check(&served, provenance.as_ref(), plan.allow_leakage)?;
                        Ok((served, resolved, check))
                    });
            match r {
                Ok(t) => read.push(t),
                Err(e) => {
                    self.jobs.forget(&job.id);
                    let _ = loaded.send(Err(e));
                    return EvalStatus::Cancelled;
                }
            }
        }
        let n_cases = read.first().map_or(0, |t| t.1.cases.len());
        job.total.store(n_cases * read.len(), Ordering::SeqCst);
        let inline = n_cases <= self.cfg.max_inline_cases;
        job.inline.store(inline, Ordering::SeqCst);
        let _ = loaded.send(Ok(inline));
        let label = plan.source.label();
        let status = match run::run_evaluation(&self.metrics, job, &read, opts, &label) {
            Some(Ok(v)) => EvalStatus::Done(v),
            Some(Err(e)) => EvalStatus::Failed(e),
            None => EvalStatus::Cancelled,
        };
        job.finish(status.clone());
        if inline || job.deleted.load(Ordering::SeqCst) {
            // Its answer went (or would have gone) to its own connection, or it was deleted:
            // nothing to keep.
            self.jobs.forget(&job.id);
        }
        status
    }

    /// A job callers may see.
    pub fn find(&self, id: &str) -> Result<Arc<EvalJob>, EvalError> {
        self.jobs.find(&self.cfg, id)
    }

    /// Cancels a running job (true), which stays readable; a finished one is left as it is.
    pub fn cancel(&self, id: &str) -> Result<(Arc<EvalJob>, EvalStatus, bool), EvalError> {
        let job = self.find(id)?;
        let status = job.status();
        let running = matches!(status, EvalStatus::Running);
        if running {
            job.cancelled.store(true, Ordering::SeqCst);
        }
        Ok((job, status, running))
    }

    /// Deletes a job: cancelled if it runs, gone for callers at once; kept in the table only
    /// while it still runs (it holds its slot until it has stopped). Returns what it was.
    pub fn delete(&self, id: &str) -> Result<(Arc<EvalJob>, EvalStatus), EvalError> {
        let job = self.find(id)?;
        job.cancelled.store(true, Ordering::SeqCst);
        job.deleted.store(true, Ordering::SeqCst);
        let status = job.status();
        if !matches!(status, EvalStatus::Running) {
            self.jobs.forget(&job.id);
        }
        Ok((job, status))
    }

    /// Shutdown: every running evaluation stops at its next batch.
    pub fn cancel_all(&self) {
        self.jobs.cancel_all();
    }
}
