//! The bounded table of evaluations: running ones (inline and jobs) and finished jobs until they
//! expire. At most admin.max_running_evaluations run at once; finished jobs are forgotten after
//! admin.evaluation_ttl_secs, or beyond admin.max_finished_evaluations (oldest first).
use super::error::EvalError;
use crate::serve::config::AdminSection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<EvalJob>>>,
    next: AtomicU64,
}

pub struct EvalJob {
    pub id: String,
    /// Answered on the request's own connection (forgotten when it finishes).
    pub inline: AtomicBool,
    /// Cases times models to rank, and ranked so far.
    pub total: AtomicUsize,
    pub done: AtomicUsize,
    pub cancelled: AtomicBool,
    /// DELETE /evaluate/{id}: gone for callers at once (404), kept in the table only while it
    /// still runs, so admin.max_running_evaluations counts it until it has stopped.
    pub deleted: AtomicBool,
    status: Mutex<EvalStatus>,
    finished_at: Mutex<Option<Instant>>,
}

/// Where an evaluation is.
#[derive(Clone)]
pub enum EvalStatus {
    Running,
    Done(serde_json::Value),
    Failed(String),
    Cancelled,
}

impl EvalStatus {
    pub fn name(&self) -> &'static str {
        match self {
            EvalStatus::Running => "running",
            EvalStatus::Done(_) => "done",
            EvalStatus::Failed(_) => "failed",
            EvalStatus::Cancelled => "cancelled",
        }
    }
}

impl EvalJob {
    pub fn status(&self) -> EvalStatus {
        self.status.lock().expect("job lock").clone()
    }

    fn is_running(&self) -> bool {
        matches!(*self.status.lock().expect("job lock"), EvalStatus::Running)
    }

    pub fn finish(&self, status: EvalStatus) {
        *self.status.lock().expect("job lock") = status;
        *self.finished_at.lock().expect("job lock") = Some(Instant::now());
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl Jobs {
    /// Registers a new running evaluation, or refuses when admin.max_running_evaluations already
    /// run. Expired finished jobs are forgotten on the way.
    pub fn admit(&self, cfg: &AdminSection) -> Result<Arc<EvalJob>, EvalError> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        forget_expired(&mut jobs, cfg);
        let running = jobs.values().filter(|j| j.is_running()).count();
        if running >= cfg.max_running_evaluations {
            return Err(EvalError::Busy(format!(
                "{running} evaluations are running (admin.max_running_evaluations); retry when one finishes"
            )));
        }
        let id = format!("eval-{}", self.next.fetch_add(1, Ordering::SeqCst) + 1);
        let job = Arc::new(EvalJob {
            id: id.clone(),
            inline: AtomicBool::new(true),
            total: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            cancelled: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            status: Mutex::new(EvalStatus::Running),
            finished_at: Mutex::new(None),
        });
        jobs.insert(id, job.clone());
        Ok(job)
    }

    pub fn forget(&self, id: &str) {
        self.jobs.lock().expect("jobs lock").remove(id);
    }

    /// A job callers may see: not inline, not deleted, not expired.
    pub fn find(&self, cfg: &AdminSection, id: &str) -> Result<Arc<EvalJob>, EvalError> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        forget_expired(&mut jobs, cfg);
        jobs.get(id)
            .filter(|j| !j.inline.load(Ordering::SeqCst) && !j.deleted.load(Ordering::SeqCst))
            .cloned()
            .ok_or_else(|| {
                EvalError::JobNotFound(format!(
                    "no evaluation {id:?} (finished jobs are kept admin.evaluation_ttl_secs)"
                ))
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
pub struct CancelOnDrop(pub Option<Arc<EvalJob>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(j) = self.0.take() {
            j.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_and_finished_jobs_expire() {
        let cfg = AdminSection {
            max_running_evaluations: 2,
            max_finished_evaluations: 1,
            ..Default::default()
        };
        let jobs = Jobs::default();
        let a = jobs.admit(&cfg).unwrap();
        let b = jobs.admit(&cfg).unwrap();
        assert!(matches!(jobs.admit(&cfg), Err(EvalError::Busy(_))));
        // Inline jobs are not visible to callers; jobs are.
        assert!(jobs.find(&cfg, &a.id).is_err());
        a.inline.store(false, Ordering::SeqCst);
        b.inline.store(false, Ordering::SeqCst);
        assert!(jobs.find(&cfg, &a.id).is_ok());
        a.finish(EvalStatus::Cancelled);
        // A slot is free again once one has finished.
        let c = jobs.admit(&cfg).unwrap();
        c.inline.store(false, Ordering::SeqCst);
        b.finish(EvalStatus::Failed("x".into()));
        // Two finished, one kept: the older goes.
        let _ = jobs.admit(&cfg).unwrap();
        assert!(jobs.find(&cfg, &a.id).is_err());
        assert_eq!(jobs.find(&cfg, &b.id).unwrap().status().name(), "failed");
        jobs.cancel_all();
        assert!(c.is_cancelled());
    }
}
