//! The batching queue and the inference worker thread that owns the model.
//!
//! Handlers hand plain Rust data ([`Job`]: a prepared query and what to rank) to a bounded queue and
//! await a oneshot reply; they never touch tensors. One OS thread owns the [`Model`], closes a batch
//! at `max_batch_size` jobs or `max_delay` after its first job arrived, drops jobs whose client has
//! gone or whose deadline has passed (without using the model), and runs the rest as one forward pass.
//! Background work (evaluations) goes through a second, small queue that the worker serves when no
//! live request is waiting, or when a background batch has waited longer than `background_max_wait`
//! (so a busy service still makes evaluation progress, at the cost of one small batch per interval).
use super::metrics::{Metrics, VersionMetrics};
use crate::model::retrieval::Retrieval;
use crate::model::{Model, Query, RankSpec};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct Job {
    pub query: Query,
    pub spec: RankSpec,
    pub enqueued: Instant,
    pub deadline: Instant,
    /// Who owns the job's fate, decided once by compare-and-swap (see [`JobState`]): the worker
    /// starts it, or whoever gives up on it first (the handler at its deadline, or the worker for a
    /// gone client / passed deadline) counts the refusal. So each refusal is counted exactly once.
    pub state: Arc<JobState>,
    /// Shared by the jobs of one HTTP request (a /recommend/batch has several): that request's
    /// refusal is counted once, whichever job notices it.
    pub fate: Arc<RequestFate>,
    pub reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

/// Queued → Started (by the worker) or Queued → Abandoned (by the handler or the worker).
#[derive(Debug, Default)]
pub struct JobState(AtomicU8);

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

impl JobState {
    /// True for the one caller that moves a queued job to started.
    pub fn start(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, STARTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// True for the one caller that abandons a queued job (and so counts the refusal).
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// One HTTP request's refusal accounting.
#[derive(Debug, Default)]
pub struct RequestFate(AtomicBool);

impl RequestFate {
    /// Counts `reason` unless this request's refusal was already counted.
    pub fn refuse_once(&self, metrics: &Metrics, reason: &'static str) {
        if !self.0.swap(true, Ordering::SeqCst) {
            metrics.refuse(reason);
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobOutput {
    pub ranked: Vec<(usize, f32)>,
    pub queue_time: Duration,
    pub inference_time: Duration,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobError {
    DeadlineExceeded,
}

/// Low-priority work: a batch of queries ranked together, answered as one.
pub struct BackgroundJob {
    pub enqueued: Instant,
    pub queries: Vec<Query>,
    pub specs: Vec<RankSpec>,
    pub reply: oneshot::Sender<Vec<Vec<(usize, f32)>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueError {
    /// The live queue is full: answer 429 now.
    Full,
    /// The worker has stopped (shutdown).
    Closed,
}

#[derive(Debug, Clone)]
pub struct BatchingConfig {
    pub max_batch_size: usize,
    /// How live requests are ranked; background work (evaluations) is always exact.
    pub retrieval: Retrieval,
    /// Longest a background batch waits behind live traffic before it is served anyway.
    pub background_max_wait: Duration,
    pub max_delay: Duration,
    pub max_queue_size: usize,
}

/// The handlers' side of the queue. Cloneable; when every clone is dropped the worker drains and
/// exits (this is how an unloaded version finishes what was queued on it, then frees its memory).
#[derive(Clone)]
pub struct QueueHandle {
    live: SyncSender<Job>,
    background: SyncSender<BackgroundJob>,
    depth: Arc<AtomicUsize>,
    depth_gauge: prometheus::IntGauge,
    stop: Arc<AtomicBool>,
    exited: Arc<AtomicBool>,
}

impl QueueHandle {
    pub fn submit(&self, job: Job) -> Result<(), EnqueueError> {
        // Count first so the worker never sees depth underflow.
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.live.try_send(job) {
            Ok(()) => {
                self.depth_gauge
                    .set(self.depth.load(Ordering::SeqCst) as i64);
                Ok(())
            }
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => EnqueueError::Full,
                    TrySendError::Disconnected(_) => EnqueueError::Closed,
                })
            }
        }
    }

    /// Blocks (on a blocking-capable thread) while the background queue is full.
    pub fn submit_background(&self, job: BackgroundJob) -> Result<(), EnqueueError> {
        self.background.send(job).map_err(|_| EnqueueError::Closed)
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Asks the worker to stop once the live queue is empty (shutdown), whoever still holds a
    /// handle; pending background work is dropped.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Set by the worker as it exits, after dropping the model.
    pub fn exited(&self) -> Arc<AtomicBool> {
        self.exited.clone()
    }
}

/// Starts one model version's worker thread with `threads` libtorch intra-op threads. `on_ready`
/// runs on the worker after the warm-up forward pass.
pub fn start(
    model: Model,
    cfg: BatchingConfig,
    metrics: Arc<Metrics>,
    version_metrics: VersionMetrics,
    threads: usize,
    on_ready: impl FnOnce() + Send + 'static,
) -> std::io::Result<(QueueHandle, std::thread::JoinHandle<()>)> {
    let (live_tx, live_rx) = mpsc::sync_channel(cfg.max_queue_size);
    let (bg_tx, bg_rx) = mpsc::sync_channel(2);
    let depth = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let exited = Arc::new(AtomicBool::new(false));
    let handle = QueueHandle {
        live: live_tx,
        background: bg_tx,
        depth: depth.clone(),
        depth_gauge: version_metrics.queue_depth.clone(),
        stop: stop.clone(),
        exited: exited.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("seqserve-model-{}", version_metrics.labels[0]))
        .spawn(move || {
            // Grad mode and OpenMP's thread count are per thread: each worker sets its own.
            let _guard = tch::no_grad_guard();
            tch::set_num_threads(threads as i32);
            warm_up(&model, cfg.max_batch_size);
            on_ready();
            let [name, version] = version_metrics.labels.clone();
            Worker {
                model,
                cfg,
                live: live_rx,
                background: bg_rx,
                depth,
                metrics: metrics.clone(),
                vm: version_metrics,
                stop,
            }
            .run();
            // The model is dropped with the worker above: its memory is free now.
            metrics.release_version(&name, &version);
            exited.store(true, Ordering::SeqCst);
            tracing::info!(model = %name, version = %version, "model version unloaded: worker stopped, memory freed");
        })?;
    Ok((handle, thread))
}

/// A real forward pass at batch 1 and at full batch size, so the first requests do not pay for
/// libtorch's lazy initialisation.
fn warm_up(model: &Model, max_batch: usize) {
    let q = model
        .prepare(&[], &Default::default())
        .expect("empty history is always valid")
        .query;
    let spec = RankSpec {
        k: 10,
        ..Default::default()
    };
    for b in [1, max_batch] {
        let qs: Vec<&Query> = std::iter::repeat_n(&q, b).collect();
        let specs = vec![spec.clone(); b];
        let _ = model.recommend(&qs, &specs);
    }
}

struct Worker {
    model: Model,
    cfg: BatchingConfig,
    live: Receiver<Job>,
    background: Receiver<BackgroundJob>,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    vm: VersionMetrics,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(self) {
        let mut pending: Option<BackgroundJob> = None;
        loop {
            if pending.is_none() {
                pending = self.background.try_recv().ok();
            }
            if pending
                .as_ref()
                .is_some_and(|b| b.enqueued.elapsed() >= self.cfg.background_max_wait)
            {
                self.run_background(pending.take().expect("checked"));
                continue;
            }
            let first = match self.live.try_recv() {
                Ok(j) => j,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if self.stop.load(Ordering::SeqCst) => break,
                Err(TryRecvError::Empty) => {
                    if let Some(bg) = pending.take() {
                        self.run_background(bg);
                        continue;
                    }
                    // Idle: wait a little for live work, then look at the background queue again.
                    match self.live.recv_timeout(Duration::from_millis(2)) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            self.took_one();
            let batch = self.fill_batch(first);
            self.run_batch(batch);
        }
        tracing::debug!("model worker: queue closed and drained");
    }

    fn took_one(&self) {
        let d = self.depth.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        self.vm.queue_depth.set(d as i64);
    }

    fn fill_batch(&self, first: Job) -> Vec<Job> {
        let close_at = first.enqueued + self.cfg.max_delay;
        let mut jobs = vec![first];
        while jobs.len() < self.cfg.max_batch_size {
            match self.live.try_recv() {
                Ok(j) => {
                    self.took_one();
                    jobs.push(j);
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= close_at {
                        break;
                    }
                    match self.live.recv_timeout(close_at - now) {
                        Ok(j) => {
                            self.took_one();
                            jobs.push(j);
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        jobs
    }

    fn run_batch(&self, jobs: Vec<Job>) {
        let now = Instant::now();
        let mut runnable = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.reply.is_closed() {
                // The client went away: skip the compute. When its handler already answered 504 it
                // abandoned the job first and counted it; count only a job nobody has counted.
                if job.state.abandon() {
                    job.fate.refuse_once(&self.metrics, "client_gone");
                }
            } else if now > job.deadline {
                if job.state.abandon() {
                    job.fate.refuse_once(&self.metrics, "deadline");
                    let _ = job.reply.send(Err(JobError::DeadlineExceeded));
                }
            } else if job.state.start() {
                runnable.push(job);
            }
        }
        if runnable.is_empty() {
            return;
        }
        let queries: Vec<&Query> = runnable.iter().map(|j| &j.query).collect();
        let specs: Vec<RankSpec> = runnable.iter().map(|j| j.spec.clone()).collect();
        let t0 = Instant::now();
        let ranked = self
            .model
            .recommend_with(self.cfg.retrieval, &queries, &specs);
        let inference_time = t0.elapsed();
        let n = runnable.len();
        self.vm.batch_size.observe(n as f64);
        self.vm
            .inference_duration
            .observe(inference_time.as_secs_f64());
        self.vm.recommendations.inc_by(n as u64);
        for (job, ranked) in runnable.into_iter().zip(ranked) {
            let queue_time = t0.saturating_duration_since(job.enqueued);
            self.vm.queue_duration.observe(queue_time.as_secs_f64());
            let _ = job.reply.send(Ok(JobOutput {
                ranked,
                queue_time,
                inference_time,
                batch_size: n,
            }));
        }
    }

    fn run_background(&self, job: BackgroundJob) {
        if job.reply.is_closed() {
            return;
        }
        let queries: Vec<&Query> = job.queries.iter().collect();
        let ranked = self.model.recommend(&queries, &job.specs);
        let _ = job.reply.send(ranked);
    }
}
