//! The bounded pool of blocking threads where large request bodies are parsed and validated,
//! so that no request holds the async threads that answer /health/live.
//!
//! Admission looks at time as well as counts. The pool keeps a running estimate of its cost per
//! byte; a body whose parse would not start before its deadline budget (half of
//! server.request_timeout_ms: the other half is for the model) is refused at once, before it is
//! read when its length is declared, instead of waiting its turn and then missing its deadline
//! anyway. Under a flood of 1 MB batches, the old count-only admission let hundreds wait and
//! almost none finish (3 answers in 20 s where ~140 fit).
use super::error::ApiError;
use crate::serve::telemetry::Metrics;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Bodies up to this size are parsed on the async thread: cheaper than a thread hand-off.
pub const INLINE_PARSE_BYTES: usize = 16 << 10;

pub struct ParsePool {
    permits: Arc<Semaphore>,
    threads: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Bytes admitted and not yet parsed (waiting or being parsed).
    queued_bytes: AtomicUsize,
    /// Running estimate of parse-and-validate nanoseconds per byte (f64 bits; 0 = not measured).
    ns_per_byte: AtomicU64,
    /// How long a request may wait for and spend in the pool (half its default deadline).
    budget: Duration,
}

/// Decrements a counter on every exit (a client that goes away while waiting included).
struct Counted<'a>(&'a AtomicUsize, usize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

impl ParsePool {
    pub fn new(threads: usize, max_waiting: usize, request_timeout: Duration) -> ParsePool {
        ParsePool {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            threads: threads.max(1),
            waiting: AtomicUsize::new(0),
            max_waiting,
            queued_bytes: AtomicUsize::new(0),
            ns_per_byte: AtomicU64::new(0f64.to_bits()),
            budget: request_timeout / 2,
        }
    }

    /// How long a body of `size` bytes would take to be parsed, from now: the work already
    /// admitted, shared by the pool's threads, then its own.
    pub fn estimate(&self, size: usize) -> Duration {
        let ns = f64::from_bits(self.ns_per_byte.load(Ordering::Relaxed));
        let ahead = self.queued_bytes.load(Ordering::SeqCst) as f64 / self.threads as f64;
        Duration::from_nanos(((ahead + size as f64) * ns) as u64)
    }

    /// Whether a body of `size` bytes can be parsed within the budget (checked when a request's
    /// declared length is known, before its body is read).
    pub fn can_take(&self, size: usize) -> bool {
        size <= INLINE_PARSE_BYTES || self.estimate(size) <= self.budget
    }

    fn busy(metrics: &Metrics, message: &str) -> ApiError {
        metrics.refuse("parse_busy");
        ApiError {
            message: message.to_string(),
            ..ApiError::overloaded()
        }
    }

    /// Runs `work` (parsing and validating a body of `size` bytes) in place when the body is
    /// small, else on the pool: at most server.parse_threads at once, at most
    /// server.max_parse_waiting waiting, none that could not start within the budget (429,
    /// counted as `parse_busy`, beyond).
    pub async fn run<R>(
        &self,
        metrics: &Metrics,
        size: usize,
        work: impl FnOnce() -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError>
    where
        R: Send + 'static,
    {
        if size <= INLINE_PARSE_BYTES {
            return work();
        }
        let admitted = Instant::now();
        if !self.can_take(size) {
            return Err(Self::busy(
                metrics,
                "the server cannot parse this request before its deadline; retry later",
            ));
        }
        self.queued_bytes.fetch_add(size, Ordering::SeqCst);
        let _queued = Counted(&self.queued_bytes, size);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(Self::busy(
                        metrics,
                        "the request queue is full; retry later",
                    ));
                }
                let _waiting = Counted(&self.waiting, 1);
                // A waiter whose budget runs out leaves rather than parse too late to finish.
                match tokio::time::timeout_at(
                    (admitted + self.budget).into(),
                    self.permits.clone().acquire_owned(),
                )
                .await
                {
                    Ok(p) => p.expect("parse pool never closed"),
                    Err(_) => {
                        return Err(Self::busy(
                            metrics,
                            "the server could not parse this request in time; retry later",
                        ))
                    }
                }
            }
        };
        // The permit moves with the work: a client that disconnects frees its slot only when the
        // thread is really done, so at most server.parse_threads parse at once.
        let r = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let r = work();
            drop(permit);
            (r, t0.elapsed())
        })
        .await
        .map_err(|_| ApiError::internal("parse failed"))?;
        self.learn(size, r.1);
        r.0
    }

    /// Updates the cost estimate with one measured parse (exponential moving average).
    fn learn(&self, size: usize, took: Duration) {
        let sample = took.as_nanos() as f64 / size.max(1) as f64;
        let old = f64::from_bits(self.ns_per_byte.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            sample
        } else {
            0.8 * old + 0.2 * sample
        };
        self.ns_per_byte.store(new.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_that_cannot_start_within_the_budget_is_refused_at_once() {
        let metrics = Metrics::new();
        // One thread, a budget of 100 ms (a 200 ms deadline), parses that take 40 ms each.
        let pool = Arc::new(ParsePool::new(1, 100, Duration::from_millis(200)));
        let size = 1 << 20;
        let slow = || {
            std::thread::sleep(Duration::from_millis(40));
            Ok(())
        };
        // The first parse teaches the pool its cost.
        pool.run(&metrics, size, slow).await.unwrap();
        assert!(pool.estimate(size) >= Duration::from_millis(30));
        // Ten at once: the first two or three fit in 100 ms; the rest are refused immediately.
        let t0 = Instant::now();
        let runs: Vec<_> = (0..10)
            .map(|_| {
                let (pool, metrics) = (pool.clone(), &metrics);
                async move {
                    let t = Instant::now();
                    (pool.run(metrics, size, slow).await.is_ok(), t.elapsed())
                }
            })
            .collect();
        let results = futures_util::future::join_all(runs).await;
        let ok = results.iter().filter(|r| r.0).count();
        assert!((1..=3).contains(&ok), "{ok} admitted");
        for (admitted, took) in &results {
            if !admitted {
                assert!(
                    *took < Duration::from_millis(5),
                    "a refusal waited {took:?}"
                );
            }
        }
        assert!(t0.elapsed() < Duration::from_millis(300));
        assert_eq!(
            metrics.rejected.with_label_values(&["parse_busy"]).get(),
            10 - ok as u64
        );
        // Small bodies never wait for the pool.
        assert!(pool.can_take(INLINE_PARSE_BYTES));
    }
}
