//! Inference: a handler hands [`Infer::run`] its validated requests (plain data: a version's
//! queue, a prepared query, what to rank, a deadline); they go on their versions' batching queues
//! (`queue`) and are ranked by each version's worker thread (`worker`), which owns the model
//! behind the [`ranker::Ranker`] trait. Handlers never touch tensors.
pub mod queue;
pub mod ranker;
pub mod worker;

use crate::model::{Query, RankSpec};
use crate::serve::telemetry::Metrics;
use queue::{EnqueueError, Job, JobClaim, JobError, JobOutput, QueueHandle, RequestFate};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// One validated request's work.
pub struct Request {
    pub queue: QueueHandle,
    pub query: Query,
    pub spec: RankSpec,
    /// The request cannot start after this (504).
    pub deadline: Instant,
}

/// Why a request got no ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferError {
    /// Its version's queue is full (retry later).
    QueueFull,
    /// The version's worker has stopped taking work (shutdown).
    Stopped,
    /// The worker stopped before answering (shutdown).
    WorkerGone,
    /// It could not start before its deadline.
    Deadline,
    /// The work already queued would keep it from finishing before its deadline: refused at
    /// once rather than left to time out (retry later).
    WontFinish,
}

impl std::fmt::Display for InferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InferError::QueueFull => "the request queue is full; retry later",
            InferError::Stopped => "shutting down",
            InferError::WorkerGone => "the model worker stopped (shutting down)",
            InferError::Deadline => "the request could not start before its deadline",
            InferError::WontFinish => {
                "the work already queued would not let this request finish before its deadline; retry later"
            }
        })
    }
}

/// The handlers' way to the model workers (cheap to share).
pub struct Infer {
    metrics: Arc<Metrics>,
}

/// A request's job on its queue.
struct Ticket {
    claim: Arc<JobClaim>,
    rx: oneshot::Receiver<Result<JobOutput, JobError>>,
    deadline: Instant,
}

impl Infer {
    pub fn new(metrics: Arc<Metrics>) -> Infer {
        Infer { metrics }
    }

    /// Queues all of an HTTP request's jobs at once (so they can share model batches) and waits
    /// for them, in order. If one cannot be queued, the others are withdrawn and the request is
    /// refused once (one refusal counted, whichever job noticed it).
    pub async fn run(&self, requests: Vec<Request>) -> Result<Vec<JobOutput>, InferError> {
        let fate = Arc::new(RequestFate::default());
        let mut tickets = Vec::with_capacity(requests.len());
        for r in requests {
            match self.submit(r, &fate) {
                Ok(t) => tickets.push(t),
                Err(e) => {
                    for t in tickets {
                        // Withdrawn: the worker skips it uncounted.
                        t.claim.abandon();
                    }
                    return Err(e);
                }
            }
        }
        futures_util::future::try_join_all(tickets.into_iter().map(|t| self.wait(t, &fate))).await
    }

    /// Queues one job: refused at once when the queue is full, or when what is queued ahead of
    /// it would take past its deadline (under overload, admitted work then finishes instead of
    /// most of it timing out in the queue).
    fn submit(&self, r: Request, fate: &Arc<RequestFate>) -> Result<Ticket, InferError> {
        if Instant::now() + r.queue.expected_wait() > r.deadline {
            fate.refuse_once(&self.metrics, "queue_full");
            return Err(InferError::WontFinish);
        }
        let (tx, rx) = oneshot::channel();
        let claim = Arc::new(JobClaim::default());
        let job = Job {
            query: r.query,
            spec: r.spec,
            enqueued: Instant::now(),
            deadline: r.deadline,
            claim: claim.clone(),
            fate: fate.clone(),
            reply: tx,
        };
        r.queue.submit(job).map_err(|e| match e {
            EnqueueError::Full => {
                fate.refuse_once(&self.metrics, "queue_full");
                InferError::QueueFull
            }
            EnqueueError::Closed => InferError::Stopped,
        })?;
        Ok(Ticket {
            claim,
            rx,
            deadline: r.deadline,
        })
    }

    /// Waits for a job's result, answering at the deadline when the job has not started (rather
    /// than waiting behind running batches).
    async fn wait(&self, mut t: Ticket, fate: &RequestFate) -> Result<JobOutput, InferError> {
        let result = match tokio::time::timeout_at(t.deadline.into(), &mut t.rx).await {
            Ok(r) => r,
            Err(_) if t.claim.abandon() => {
                fate.refuse_once(&self.metrics, "deadline");
                return Err(InferError::Deadline);
            }
            // Started (or abandoned by the worker, which answers): wait for its answer.
            Err(_) => t.rx.await,
        };
        match result {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(JobError::DeadlineExceeded)) => Err(InferError::Deadline),
            Err(_) => Err(InferError::WorkerGone),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::queue::tests::config;
    use super::worker::tests::Fake;
    use super::*;
    use std::time::Duration;

    /// A request for history `[id]` (the fake ranker answers with `id`), due after `timeout`.
    pub fn request(q: &QueueHandle, id: i64, timeout: Duration) -> Request {
        let (job, _) = super::queue::tests::job(id, timeout);
        Request {
            queue: q.clone(),
            query: job.query,
            spec: job.spec,
            deadline: job.deadline,
        }
    }

    fn worker(delay_ms: u64, queue: usize) -> (QueueHandle, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let mut cfg = config(8, 1, queue);
        cfg.max_queue_size = queue;
        let (tx, rx) = std::sync::mpsc::channel();
        let q = worker::start(
            Box::new(Fake::new(Duration::from_millis(delay_ms))),
            cfg,
            metrics.clone(),
            metrics.for_version("fake", "1"),
            1,
            move || tx.send(()).unwrap(),
        )
        .unwrap()
        .queue;
        rx.recv().unwrap();
        (q, metrics)
    }

    #[tokio::test]
    async fn a_request_gets_its_answers_in_order() {
        let (q, metrics) = worker(1, 64);
        let infer = Infer::new(metrics);
        let out = infer
            .run(
                (1..=5)
                    .map(|i| request(&q, i, Duration::from_secs(5)))
                    .collect(),
            )
            .await
            .unwrap();
        let firsts: Vec<usize> = out.iter().map(|o| o.ranked[0].0).collect();
        assert_eq!(firsts, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_request_that_cannot_start_in_time_answers_at_its_deadline() {
        let (q, metrics) = worker(300, 64);
        let infer = Arc::new(Infer::new(metrics.clone()));
        // The first request holds the worker for 300 ms; the second is due after 40 ms.
        let r = request(&q, 1, Duration::from_secs(5));
        let busy = tokio::spawn(async move { infer.run(vec![r]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let late = Infer::new(metrics.clone())
            .run(vec![request(&q, 2, Duration::from_millis(40))])
            .await;
        assert_eq!(late.unwrap_err(), InferError::Deadline);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "not after the running batch"
        );
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(metrics.rejected.with_label_values(&["deadline"]).get(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_whole_request_once() {
        let (q, metrics) = worker(200, 2);
        let infer = Arc::new(Infer::new(metrics.clone()));
        let r = request(&q, 1, Duration::from_secs(5));
        let first = tokio::spawn(async move { infer.run(vec![r]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Two more fill the queue of 2 behind the running job; a request of 3 cannot fit.
        let r = Infer::new(metrics.clone())
            .run(
                (2..=6)
                    .map(|i| request(&q, i, Duration::from_secs(5)))
                    .collect(),
            )
            .await;
        assert_eq!(r.unwrap_err(), InferError::QueueFull);
        assert_eq!(metrics.rejected.with_label_values(&["queue_full"]).get(), 1);
        assert!(first.await.unwrap().is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_that_the_queue_would_make_late_is_refused_at_once() {
        let (q, metrics) = worker(50, 64);
        let infer = Arc::new(Infer::new(metrics.clone()));
        // The worker learns its cost (~50 ms a batch of one: batches here are of 8 at most).
        infer
            .run(vec![request(&q, 0, Duration::from_secs(5))])
            .await
            .unwrap();
        // Sixteen queued (about 2 batches of 8, ~100 ms) ahead of a request due in 20 ms.
        let i2 = infer.clone();
        let reqs: Vec<Request> = (1..=16)
            .map(|i| request(&q, i, Duration::from_secs(5)))
            .collect();
        let ahead = tokio::spawn(async move { i2.run(reqs).await });
        // Until they are queued (on a loaded machine the spawned task may start late).
        while q.depth() < 8 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t = Instant::now();
        let r = infer
            .run(vec![request(&q, 99, Duration::from_millis(20))])
            .await;
        assert_eq!(r.unwrap_err(), InferError::WontFinish);
        // At once: not after its 20 ms deadline, let alone the ~100 ms the queue would take.
        assert!(t.elapsed() < Duration::from_millis(15), "refused at once");
        assert!(ahead.await.unwrap().is_ok());
    }
}
