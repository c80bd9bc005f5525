//! The batching queue of one model version: handlers put [`Job`]s (plain Rust data: a prepared
//! query and what to rank) on a bounded channel and await a oneshot reply; the worker takes them
//! out as batches through [`Intake`], which closes a batch at `max_batch_size` jobs or
//! `max_delay` after its first job arrived. Background work (evaluations) goes through a second,
//! small channel, served when no live request waits, or when a background batch has waited longer
//! than `background_max_wait` (so a busy service still makes evaluation progress, at the cost of
//! one small batch per interval).
use crate::model::retrieval::Retrieval;
use crate::model::{Query, RankSpec};
use crate::serve::telemetry::Metrics;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct Job {
    pub query: Query,
    pub spec: RankSpec,
    pub enqueued: Instant,
    pub deadline: Instant,
    /// Who owns the job's fate, decided once by compare-and-swap (see [`JobClaim`]): the worker
    /// starts it, or whoever gives up on it first (the handler at its deadline, or the worker for a
    /// gone client / passed deadline) counts the refusal. So each refusal is counted exactly once.
    pub claim: Arc<JobClaim>,
    /// Shared by the jobs of one HTTP request (a /recommend/batch has several): that request's
    /// refusal is counted once, whichever job notices it.
    pub fate: Arc<RequestFate>,
    pub reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

/// Queued → Started (by the worker) or Queued → Abandoned (by the handler or the worker).
#[derive(Debug, Default)]
pub struct JobClaim(AtomicU8);

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

impl JobClaim {
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
    /// Worker threads wanted for the queue (sharing one model's weights); 1 where the model cannot
    /// rank on several threads at once.
    pub workers: usize,
}

/// The handlers' side of the queue. Cloneable; when every clone is dropped the worker drains and
/// exits (this is how an unloaded version finishes what was queued on it, then frees its memory).
#[derive(Clone)]
pub struct QueueHandle {
    live: SyncSender<Job>,
    background: SyncSender<BackgroundJob>,
    depth: Arc<AtomicUsize>,
    /// The worker's running estimate of the time one job costs (nanoseconds): with the depth, how
    /// long a new job would wait.
    cost: Arc<AtomicU64>,
    depth_gauge: prometheus::IntGauge,
    stop: Arc<AtomicBool>,
    exited: Arc<AtomicBool>,
}

/// The worker's side of the queue.
pub struct Intake {
    live: Receiver<Job>,
    background: Receiver<BackgroundJob>,
    depth: Arc<AtomicUsize>,
    cost: Arc<AtomicU64>,
    depth_gauge: prometheus::IntGauge,
    stop: Arc<AtomicBool>,
    /// A background job taken out but not run yet (live work came first).
    pending: Option<BackgroundJob>,
    max_batch_size: usize,
    max_delay: Duration,
    background_max_wait: Duration,
}

/// The queue's running estimate of what one job costs, written by its workers.
pub struct CostMeter {
    cost: Arc<AtomicU64>,
    workers: u64,
}

impl CostMeter {
    /// Records what a batch of `jobs` cost (exponential moving average per job). With several
    /// workers running batches side by side, a job costs the queue its time divided among them.
    pub fn learn(&self, jobs: usize, took: Duration) {
        let sample = took.as_nanos() as u64 / (jobs.max(1) as u64 * self.workers.max(1));
        let old = self.cost.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        self.cost.store(new, Ordering::Relaxed);
    }
}

/// What the worker runs next.
pub enum Work {
    Batch(Vec<Job>),
    Background(BackgroundJob),
}

/// A new queue: the handlers' handle, and the intake its worker reads.
pub fn channel(cfg: &BatchingConfig, depth_gauge: prometheus::IntGauge) -> (QueueHandle, Intake) {
    let (live_tx, live_rx) = mpsc::sync_channel(cfg.max_queue_size);
    let (bg_tx, bg_rx) = mpsc::sync_channel(2);
    let depth = Arc::new(AtomicUsize::new(0));
    let cost = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = QueueHandle {
        live: live_tx,
        background: bg_tx,
        depth: depth.clone(),
        cost: cost.clone(),
        depth_gauge: depth_gauge.clone(),
        stop: stop.clone(),
        exited: Arc::new(AtomicBool::new(false)),
    };
    let intake = Intake {
        live: live_rx,
        background: bg_rx,
        depth,
        cost,
        depth_gauge,
        stop,
        pending: None,
        max_batch_size: cfg.max_batch_size,
        max_delay: cfg.max_delay,
        background_max_wait: cfg.background_max_wait,
    };
    (handle, intake)
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

    /// How long the jobs already queued will take the worker, by its recent cost per job (zero
    /// until it has measured one).
    pub fn expected_wait(&self) -> Duration {
        Duration::from_nanos(
            self.cost
                .load(Ordering::Relaxed)
                .saturating_mul(self.depth() as u64),
        )
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

impl Intake {
    /// The next work: a live batch first, a background job when no live request waits (or when
    /// it has waited `background_max_wait`). None once the queue is closed (every handle dropped)
    /// or stopped with no live work left.
    pub fn next_work(&mut self) -> Option<Work> {
        loop {
            if self.pending.is_none() {
                self.pending = self.background.try_recv().ok();
            }
            if self
                .pending
                .as_ref()
                .is_some_and(|b| b.enqueued.elapsed() >= self.background_max_wait)
            {
                return self.pending.take().map(Work::Background);
            }
            let first = match self.live.try_recv() {
                Ok(j) => j,
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) if self.stop.load(Ordering::SeqCst) => return None,
                Err(TryRecvError::Empty) => {
                    if let Some(bg) = self.pending.take() {
                        return Some(Work::Background(bg));
                    }
                    // Idle: wait a little for live work, then look at the background queue again.
                    match self.live.recv_timeout(Duration::from_millis(2)) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return None,
                    }
                }
            };
            self.took_one();
            return Some(Work::Batch(self.fill_batch(first)));
        }
    }

    /// What `workers` worker threads use to report their batches' cost, without holding the
    /// intake.
    pub fn meter(&self, workers: usize) -> CostMeter {
        CostMeter {
            cost: self.cost.clone(),
            workers: workers as u64,
        }
    }

    fn took_one(&self) {
        let d = self.depth.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        self.depth_gauge.set(d as i64);
    }

    /// Adds jobs to `first` until the batch is full or `max_delay` after `first` was queued.
    fn fill_batch(&self, first: Job) -> Vec<Job> {
        let close_at = first.enqueued + self.max_delay;
        let mut jobs = vec![first];
        while jobs.len() < self.max_batch_size {
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn config(
        max_batch_size: usize,
        max_delay_ms: u64,
        max_queue_size: usize,
    ) -> BatchingConfig {
        BatchingConfig {
            max_batch_size,
            retrieval: Retrieval::Exact,
            background_max_wait: Duration::from_millis(50),
            max_delay: Duration::from_millis(max_delay_ms),
            max_queue_size,
            workers: 1,
        }
    }

    /// A job with history `[id]`, due `deadline` from now; its reply's receiver.
    pub fn job(
        id: i64,
        deadline: Duration,
    ) -> (Job, oneshot::Receiver<Result<JobOutput, JobError>>) {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            query: Query {
                items: vec![id],
                ..Default::default()
            },
            spec: RankSpec {
                k: 1,
                ..Default::default()
            },
            enqueued: Instant::now(),
            deadline: Instant::now() + deadline,
            claim: Arc::default(),
            fate: Arc::default(),
            reply: tx,
        };
        (job, rx)
    }

    fn gauge() -> prometheus::IntGauge {
        prometheus::IntGauge::new("depth", "test").unwrap()
    }

    fn ids(w: Work) -> Vec<i64> {
        match w {
            Work::Batch(b) => b.iter().map(|j| j.query.items[0]).collect(),
            Work::Background(_) => panic!("expected a live batch"),
        }
    }

    #[test]
    fn a_batch_closes_at_its_size_and_keeps_the_queue_order() {
        let (q, mut intake) = channel(&config(4, 1000, 64), gauge());
        let mut rxs = Vec::new();
        for i in 0..10 {
            let (j, rx) = job(i, Duration::from_secs(5));
            q.submit(j).unwrap();
            rxs.push(rx);
        }
        assert_eq!(q.depth(), 10);
        assert_eq!(ids(intake.next_work().unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(ids(intake.next_work().unwrap()), vec![4, 5, 6, 7]);
        assert_eq!(q.depth(), 2);
        // Two left: the batch closes at max_delay (1 s after the first was queued), not at size.
        let t = Instant::now();
        assert_eq!(ids(intake.next_work().unwrap()), vec![8, 9]);
        assert!(t.elapsed() < Duration::from_millis(1500));
    }

    #[test]
    fn a_batch_closes_at_max_delay_after_its_first_job() {
        let (q, mut intake) = channel(&config(32, 30, 64), gauge());
        let (j, _rx) = job(1, Duration::from_secs(5));
        q.submit(j).unwrap();
        let late = q.clone();
        let feeder = std::thread::spawn(move || {
            // Inside the window: joins the batch. Well after it: the next batch.
            std::thread::sleep(Duration::from_millis(5));
            let (j, rx2) = job(2, Duration::from_secs(5));
            late.submit(j).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            let (j, rx3) = job(3, Duration::from_secs(5));
            late.submit(j).unwrap();
            (rx2, rx3)
        });
        let t = Instant::now();
        assert_eq!(ids(intake.next_work().unwrap()), vec![1, 2]);
        let waited = t.elapsed();
        assert!(
            // The 30 ms window, with room for a loaded machine, well before job 3 (at ~405 ms).
            waited >= Duration::from_millis(20) && waited < Duration::from_millis(300),
            "closed after {waited:?}"
        );
        assert_eq!(ids(intake.next_work().unwrap()), vec![3]);
        let _ = feeder.join();
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_a_closed_one_says_so() {
        let (q, intake) = channel(&config(4, 1, 3), gauge());
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (j, rx) = job(i, Duration::from_secs(5));
            q.submit(j).unwrap();
            rxs.push(rx);
        }
        let t = Instant::now();
        let (j, _rx) = job(9, Duration::from_secs(5));
        assert_eq!(q.submit(j).err(), Some(EnqueueError::Full));
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "refusal must not wait"
        );
        assert_eq!(q.depth(), 3, "a refused job is not counted as queued");
        drop(intake);
        let (j, _rx) = job(10, Duration::from_secs(5));
        assert_eq!(q.submit(j).err(), Some(EnqueueError::Closed));
    }

    #[test]
    fn background_work_waits_for_live_work_but_not_forever() {
        let mut cfg = config(4, 1, 64);
        cfg.background_max_wait = Duration::from_millis(40);
        let (q, mut intake) = channel(&cfg, gauge());
        let (tx, _rx) = oneshot::channel();
        q.submit_background(BackgroundJob {
            enqueued: Instant::now(),
            queries: vec![],
            specs: vec![],
            reply: tx,
        })
        .unwrap();
        let (j, _r) = job(1, Duration::from_secs(5));
        q.submit(j).unwrap();
        // Live first...
        assert_eq!(ids(intake.next_work().unwrap()), vec![1]);
        // ...then the background job, as no live work waits.
        assert!(matches!(intake.next_work(), Some(Work::Background(_))));
        // A background job that has waited its limit goes before live work.
        let (tx, _rx) = oneshot::channel();
        q.submit_background(BackgroundJob {
            enqueued: Instant::now() - Duration::from_millis(100),
            queries: vec![],
            specs: vec![],
            reply: tx,
        })
        .unwrap();
        let (j, _r) = job(2, Duration::from_secs(5));
        q.submit(j).unwrap();
        assert!(matches!(intake.next_work(), Some(Work::Background(_))));
        assert_eq!(ids(intake.next_work().unwrap()), vec![2]);
    }

    #[test]
    fn stop_ends_the_intake_once_the_live_queue_is_empty() {
        let (q, mut intake) = channel(&config(4, 1, 64), gauge());
        let (j, _r) = job(1, Duration::from_secs(5));
        q.submit(j).unwrap();
        q.stop();
        assert_eq!(
            ids(intake.next_work().unwrap()),
            vec![1],
            "queued work still runs"
        );
        assert!(intake.next_work().is_none());
    }
}
