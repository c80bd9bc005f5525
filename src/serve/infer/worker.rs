//! The model worker: one OS thread per loaded version owns its [`Ranker`], warms it up, takes
//! work from its queue's [`Intake`], drops jobs whose client has gone or whose deadline has
//! passed (without using the model), and ranks the rest as one batch. With
//! `batching.workers_per_model` above 1, and a ranker that may rank on several threads at once, it
//! starts helper threads that share the ranker and the intake: one at a time collects its next
//! batch while the others run theirs, which keeps a core busy that a single worker leaves idle
//! while it waits for a batch (README, "Where the CPU goes" under Benchmark). The version is
//! unloaded when all of them have stopped.
use super::queue::{
    BackgroundJob, BatchingConfig, CostMeter, Intake, Job, JobError, JobOutput, QueueHandle, Work,
};
use super::ranker::Ranker;
use crate::model::retrieval::Retrieval;
use crate::model::{Query, RankSpec};
use crate::serve::telemetry::{Metrics, VersionMetrics};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What [`start`] started: the queue's handle, the thread to join once the version is unloaded
/// (it outlives its helpers), and how many worker threads rank for the version.
pub struct Started {
    pub queue: QueueHandle,
    pub thread: std::thread::JoinHandle<()>,
    pub workers: usize,
}

/// Starts one model version's worker thread, and `cfg.workers - 1` helpers where the ranker allows
/// it, each with `threads` intra-op threads. `on_ready` runs after the warm-up forward passes.
pub fn start(
    ranker: Box<dyn Ranker>,
    cfg: BatchingConfig,
    metrics: Arc<Metrics>,
    version_metrics: VersionMetrics,
    threads: usize,
    on_ready: impl FnOnce() + Send + 'static,
) -> std::io::Result<Started> {
    let (ranker, workers) = SharedRanker::new(ranker, cfg.workers);
    if workers < cfg.workers {
        tracing::info!(
            model = %version_metrics.labels[0],
            "one model worker: this version's retrieval cannot rank on several threads at once"
        );
    }
    let (handle, intake) = super::queue::channel(&cfg, version_metrics.queue_depth.clone());
    let exited = handle.exited();
    let thread_name = format!("seqserve-model-{}", version_metrics.labels[0]);
    let thread = std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            ranker.init_thread(threads);
            warm_up(&*ranker, cfg.max_batch_size);
            on_ready();
            let [name, version] = version_metrics.labels.clone();
            let worker = Worker {
                ranker,
                retrieval: cfg.retrieval,
                meter: intake.meter(workers),
                intake: Mutex::new(intake),
                metrics: metrics.clone(),
                vm: version_metrics,
            };
            std::thread::scope(|s| {
                for _ in 1..workers {
                    let helper = std::thread::Builder::new()
                        .name(thread_name.clone())
                        .spawn_scoped(s, || {
                            worker.ranker.init_thread(threads);
                            worker.run();
                        });
                    if let Err(e) = helper {
                        tracing::warn!(error = %e, "cannot start a model worker helper; fewer workers serve this version");
                    }
                }
                worker.run();
            });
            drop(worker);
            // The model is dropped with the worker above: its memory is free now, and handed back
            // to the system (glibc keeps freed memory in its arenas otherwise).
            metrics.release_version(&name, &version);
            crate::serve::telemetry::release_free_memory();
            exited.store(true, Ordering::SeqCst);
            tracing::info!(model = %name, version = %version, "model version unloaded: worker stopped, memory freed");
        })?;
    Ok(Started {
        queue: handle,
        thread,
        workers,
    })
}

/// A real forward pass at batch 1 and at full batch size, so the first requests do not pay for
/// libtorch's lazy initialisation.
fn warm_up(ranker: &dyn Ranker, max_batch: usize) {
    let q = crate::model::prepare(
        ranker.manifest(),
        &ranker.catalogue(),
        &[],
        &Default::default(),
    )
    .expect("empty history is always valid")
    .query;
    let spec = RankSpec {
        k: 10,
        ..Default::default()
    };
    for b in [1, max_batch] {
        let qs: Vec<&Query> = std::iter::repeat_n(&q, b).collect();
        let specs = vec![spec.clone(); b];
        let _ = ranker.rank(Retrieval::Exact, &qs, &specs);
    }
}

/// The ranker of one version, shared by its worker threads.
struct SharedRanker(Box<dyn Ranker>);

impl SharedRanker {
    /// Wraps `ranker` for `wanted` workers; returns how many may share it: `wanted` (at least 1)
    /// where the ranker may rank on several threads at once, else 1.
    fn new(ranker: Box<dyn Ranker>, wanted: usize) -> (SharedRanker, usize) {
        let workers = if ranker.concurrent_ranking() {
            wanted.max(1)
        } else {
            1
        };
        (SharedRanker(ranker), workers)
    }
}

// SAFETY: Sync lets a version's worker threads call the ranker's `&self` methods at once. Only
// `start` shares a SharedRanker between threads, and only with the count `SharedRanker::new`
// returned: more than one thread only for a ranker whose `concurrent_ranking()` is true, which
// promises that `rank` only reads it. For `Model` (the one real ranker) that holds because the
// encoder's forward pass runs under no_grad on weights no one writes after loading (libtorch's
// reference counts are atomic; every op allocates its own output), each retriever in use says
// `concurrent()` (its `retrieve` reads data fixed at load), and `init_thread` sets a per-thread
// libtorch setting. The other trait methods return copies or `Arc`s of immutable data.
unsafe impl Sync for SharedRanker {}

impl std::ops::Deref for SharedRanker {
    type Target = dyn Ranker;
    fn deref(&self) -> &(dyn Ranker + 'static) {
        &*self.0
    }
}

struct Worker {
    ranker: SharedRanker,
    retrieval: Retrieval,
    /// Shared by the version's worker threads: one at a time collects its next batch.
    intake: Mutex<Intake>,
    meter: CostMeter,
    metrics: Arc<Metrics>,
    vm: VersionMetrics,
}

impl Worker {
    fn run(&self) {
        loop {
            // The lock is held only while a batch is collected (at most max_delay), never while
            // one runs. A helper that panicked poisons nothing a batch needs: the intake's state
            // is the channels'.
            let work = self
                .intake
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_work();
            let Some(work) = work else { break };
            match work {
                Work::Batch(jobs) => self.run_batch(jobs),
                Work::Background(job) => self.run_background(job),
            }
        }
        tracing::debug!("model worker: queue closed and drained");
    }

    fn run_batch(&self, jobs: Vec<Job>) {
        let now = Instant::now();
        let mut runnable = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.reply.is_closed() {
                // The client went away: skip the compute. When its handler already answered 504 it
                // abandoned the job first and counted it; count only a job nobody has counted.
                if job.claim.abandon() {
                    job.fate.refuse_once(&self.metrics, "client_gone");
                }
            } else if now > job.deadline {
                if job.claim.abandon() {
                    job.fate.refuse_once(&self.metrics, "deadline");
                    let _ = job.reply.send(Err(JobError::DeadlineExceeded));
                }
            } else if job.claim.start() {
                runnable.push(job);
            }
        }
        if runnable.is_empty() {
            return;
        }
        let queries: Vec<&Query> = runnable.iter().map(|j| &j.query).collect();
        let specs: Vec<RankSpec> = runnable.iter().map(|j| j.spec.clone()).collect();
        let t0 = Instant::now();
        let ranked = self.ranker.rank(self.retrieval, &queries, &specs);
        let inference_time = t0.elapsed();
        let n = runnable.len();
        self.meter.learn(n, inference_time);
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

    /// Evaluations: always exact (a report never mixes retrievers).
    fn run_background(&self, job: BackgroundJob) {
        if job.reply.is_closed() {
            return;
        }
        let queries: Vec<&Query> = job.queries.iter().collect();
        let ranked = self.ranker.rank(Retrieval::Exact, &queries, &job.specs);
        let _ = job.reply.send(ranked);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Architecture, Catalogue, Manifest};
    use crate::serve::infer::queue::tests::{config, job};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A ranker that ranks nothing: it records each batch (the first history item of each query)
    /// and the most batches it ever ran at once, and takes `delay` per batch.
    pub struct Fake {
        pub manifest: Manifest,
        pub catalogue: Arc<Catalogue>,
        pub delay: Duration,
        pub batches: Arc<Mutex<Vec<Vec<i64>>>>,
        /// What `concurrent_ranking` answers.
        pub concurrent: bool,
        running: std::sync::atomic::AtomicUsize,
        pub most_at_once: Arc<std::sync::atomic::AtomicUsize>,
    }

    pub fn manifest(name: &str) -> Manifest {
        Manifest {
            format_version: crate::model::FORMAT_VERSION,
            name: name.into(),
            version: "1".into(),
            architecture: Architecture {
                n_items: 3,
                d_model: 4,
                n_layers: 1,
                n_heads: 1,
                ffn_dim: 4,
                dropout: 0.0,
                max_len: 4,
                embedding_norm: false,
                norm: Default::default(),
                layer_norm_eps: 1e-5,
                activation: Default::default(),
                positions: Default::default(),
                head: Default::default(),
                padding: Default::default(),
                item_input_scale: 1.0,
            },
            behaviours: vec![],
            context: vec![],
            training: None,
            metrics: None,
            imported: None,
        }
    }

    impl Fake {
        pub fn new(delay: Duration) -> Fake {
            Fake {
                manifest: manifest("fake"),
                catalogue: Arc::new(
                    Catalogue::new(vec!["a".into(), "b".into(), "c".into()]).unwrap(),
                ),
                delay,
                batches: Arc::default(),
                concurrent: false,
                running: Default::default(),
                most_at_once: Arc::default(),
            }
        }
    }

    impl Ranker for Fake {
        fn manifest(&self) -> &Manifest {
            &self.manifest
        }
        fn catalogue(&self) -> Arc<Catalogue> {
            self.catalogue.clone()
        }
        fn device_name(&self) -> String {
            "fake".into()
        }
        fn retrieval_name(&self, _: Retrieval) -> &'static str {
            "exact"
        }
        fn rank(&self, _: Retrieval, queries: &[&Query], _: &[RankSpec]) -> Vec<Vec<(usize, f32)>> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.batches.lock().unwrap().push(
                queries
                    .iter()
                    .map(|q| q.items.first().copied().unwrap_or(0))
                    .collect(),
            );
            queries
                .iter()
                .map(|q| vec![(q.items.first().copied().unwrap_or(0) as usize, 1.0)])
                .collect()
        }
        fn concurrent_ranking(&self) -> bool {
            self.concurrent
        }
    }

    fn started(
        fake: Fake,
        max_batch: usize,
        delay_ms: u64,
    ) -> (QueueHandle, std::thread::JoinHandle<()>, Arc<Metrics>) {
        let (s, metrics) = started_with(fake, max_batch, delay_ms, 1);
        (s.queue, s.thread, metrics)
    }

    fn started_with(
        fake: Fake,
        max_batch: usize,
        delay_ms: u64,
        workers: usize,
    ) -> (Started, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let vm = metrics.for_version("fake", "1");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut cfg = config(max_batch, delay_ms, 64);
        cfg.workers = workers;
        let s = start(Box::new(fake), cfg, metrics.clone(), vm, 1, move || {
            tx.send(()).unwrap()
        })
        .unwrap();
        rx.recv().unwrap();
        (s, metrics)
    }

    /// Submits jobs 1..=n and returns each one's answer, in submission order.
    fn answers(q: &QueueHandle, n: i64) -> Vec<JobOutput> {
        let rxs: Vec<_> = (1..=n)
            .map(|i| {
                let (j, rx) = job(i, Duration::from_secs(10));
                q.submit(j).unwrap();
                rx
            })
            .collect();
        rxs.into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap())
            .collect()
    }

    #[test]
    fn several_workers_run_batches_side_by_side_and_answer_every_job_once() {
        let mut fake = Fake::new(Duration::from_millis(100));
        fake.concurrent = true;
        let (batches, most) = (fake.batches.clone(), fake.most_at_once.clone());
        let (s, _m) = started_with(fake, 2, 0, 2);
        assert_eq!(s.workers, 2);
        batches.lock().unwrap().clear(); // the warm-up's batches
        let out = answers(&s.queue, 8);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.ranked[0].0, i + 1, "each job gets its own answer");
        }
        let mut ranked = batches.lock().unwrap().concat();
        ranked.sort();
        assert_eq!(ranked, (1..=8).collect::<Vec<_>>(), "every job ranked once");
        // 4 batches of 100 ms each, 8 jobs queued at once: the second worker takes a batch while
        // the first runs one.
        assert_eq!(most.load(Ordering::SeqCst), 2, "two batches ran at once");
        // Unloading waits for both: the thread `start` returned ends after its helper.
        let exited = s.queue.exited();
        drop(s.queue);
        s.thread.join().unwrap();
        assert!(exited.load(Ordering::SeqCst));
    }

    #[test]
    fn a_ranker_that_cannot_rank_on_several_threads_gets_one_worker() {
        let fake = Fake::new(Duration::from_millis(20)); // concurrent: false
        let most = fake.most_at_once.clone();
        let (s, _m) = started_with(fake, 2, 0, 4);
        assert_eq!(s.workers, 1);
        let out = answers(&s.queue, 8);
        assert_eq!(out.len(), 8);
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two batches at once");
    }

    fn refused(metrics: &Metrics, reason: &str) -> u64 {
        metrics.rejected.with_label_values(&[reason]).get()
    }

    #[test]
    fn jobs_are_answered_in_batches_and_the_worker_exits_when_its_handles_go() {
        let fake = Fake::new(Duration::from_millis(20));
        let batches = fake.batches.clone();
        let (q, thread, _m) = started(fake, 4, 5);
        batches.lock().unwrap().clear(); // the warm-up's batches
        let rxs: Vec<_> = (1..=6)
            .map(|i| {
                let (j, rx) = job(i, Duration::from_secs(5));
                q.submit(j).unwrap();
                rx
            })
            .collect();
        for (i, rx) in rxs.into_iter().enumerate() {
            let out = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(out.ranked[0].0, i + 1, "each job gets its own answer");
            assert!(out.batch_size <= 4);
        }
        let b = batches.lock().unwrap().clone();
        assert_eq!(
            b.concat(),
            vec![1, 2, 3, 4, 5, 6],
            "every job once, in order"
        );
        assert!(b.iter().all(|x| x.len() <= 4));
        let exited = q.exited();
        drop(q);
        thread.join().unwrap();
        assert!(exited.load(Ordering::SeqCst));
    }

    #[test]
    fn a_job_whose_deadline_passes_in_the_queue_is_refused_without_the_model() {
        // The first batch takes 200 ms; a job due in 50 ms waits behind it and expires.
        let fake = Fake::new(Duration::from_millis(200));
        let batches = fake.batches.clone();
        let (q, _t, metrics) = started(fake, 1, 0);
        batches.lock().unwrap().clear();
        let (slow, slow_rx) = job(1, Duration::from_secs(5));
        q.submit(slow).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (late, late_rx) = job(2, Duration::from_millis(50));
        q.submit(late).unwrap();
        assert!(slow_rx.blocking_recv().unwrap().is_ok());
        assert_eq!(
            late_rx.blocking_recv().unwrap().unwrap_err(),
            JobError::DeadlineExceeded
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            batches.lock().unwrap().concat(),
            vec![1],
            "the expired job never ran"
        );
        assert_eq!(refused(&metrics, "deadline"), 1);
    }

    #[test]
    fn a_job_whose_client_has_gone_is_skipped_and_counted_once() {
        let fake = Fake::new(Duration::from_millis(150));
        let batches = fake.batches.clone();
        let (q, _t, metrics) = started(fake, 1, 0);
        batches.lock().unwrap().clear();
        let (busy, busy_rx) = job(1, Duration::from_secs(5));
        q.submit(busy).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (gone, gone_rx) = job(2, Duration::from_secs(5));
        q.submit(gone).unwrap();
        drop(gone_rx); // the client disconnects while its job waits
        let (next, next_rx) = job(3, Duration::from_secs(5));
        q.submit(next).unwrap();
        assert!(busy_rx.blocking_recv().unwrap().is_ok());
        assert!(next_rx.blocking_recv().unwrap().is_ok());
        assert_eq!(batches.lock().unwrap().concat(), vec![1, 3]);
        assert_eq!(refused(&metrics, "client_gone"), 1);
    }

    #[test]
    fn a_job_abandoned_by_its_handler_is_neither_run_nor_counted_twice() {
        let fake = Fake::new(Duration::from_millis(100));
        let batches = fake.batches.clone();
        let (q, _t, metrics) = started(fake, 1, 0);
        batches.lock().unwrap().clear();
        let (busy, busy_rx) = job(1, Duration::from_secs(5));
        q.submit(busy).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let (j, rx) = job(2, Duration::from_secs(5));
        let claim = j.claim.clone();
        let fate = j.fate.clone();
        q.submit(j).unwrap();
        // The handler gives up at its own deadline first: it abandons and counts the refusal.
        assert!(claim.abandon());
        fate.refuse_once(&metrics, "deadline");
        drop(rx);
        assert!(busy_rx.blocking_recv().unwrap().is_ok());
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(batches.lock().unwrap().concat(), vec![1]);
        assert_eq!(
            refused(&metrics, "deadline") + refused(&metrics, "client_gone"),
            1
        );
    }
}
