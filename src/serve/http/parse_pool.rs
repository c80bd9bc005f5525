//! The bounded pool of blocking threads where large request bodies are parsed and validated,
//! so that no request holds the async threads that answer /health/live.
use super::error::ApiError;
use crate::serve::telemetry::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Bodies up to this size are parsed on the async thread: cheaper than a thread hand-off.
const INLINE_PARSE_BYTES: usize = 16 << 10;

/// The blocking-parse pool's admission control.
pub struct ParsePool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl ParsePool {
    pub fn new(threads: usize, max_waiting: usize) -> ParsePool {
        ParsePool {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Runs `work` (parsing and validating a body of `size` bytes) in place when the body is
    /// small, else on the pool: at most server.parse_threads at once, at most
    /// server.max_parse_waiting waiting (429 beyond, counted as `parse_busy`).
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
        let pool = self;
        let permit = match pool.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if pool.waiting.fetch_add(1, Ordering::SeqCst) >= pool.max_waiting {
                    pool.waiting.fetch_sub(1, Ordering::SeqCst);
                    metrics.refuse("parse_busy");
                    return Err(ApiError::overloaded());
                }
                // Decrements on every exit, including a client that goes away while waiting.
                struct Waiting<'a>(&'a AtomicUsize);
                impl Drop for Waiting<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _waiting = Waiting(&pool.waiting);
                pool.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("parse pool never closed")
            }
        };
        // The permit moves with the work: a client that disconnects frees its slot only when the
        // thread is really done, so at most server.parse_threads parse at once.
        tokio::task::spawn_blocking(move || {
            let r = work();
            drop(permit);
            r
        })
        .await
        .map_err(|_| ApiError::internal("parse failed"))?
    }
}
