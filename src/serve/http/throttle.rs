//! Admission of large inference requests (bodies over 16 KiB) by how many are in flight, with an
//! adaptive limit: additive increase while admitted requests finish well inside their deadline,
//! multiplicative decrease when they come close to it or are refused downstream (TCP congestion
//! control's rule, as concurrency limiters such as Netflix's apply it to servers).
//!
//! Why: estimating a large request's cost up front is unreliable (parse, validation and the model
//! scale differently with the body), and letting every one in made them all miss their deadline
//! (3 answers in 20 s where ~140 fit, under 300 clients looping 0.9 MB batches). The limit finds
//! the concurrency the server can finish in time; beyond it, a request is refused at once, before
//! its body is read, so a refusal costs microseconds.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Throttle {
    limit: Mutex<f64>,
    in_flight: AtomicUsize,
    min: f64,
    max: f64,
    /// A request that takes longer than this (of its deadline) shrinks the limit.
    slow: Duration,
    /// One that takes less than this grows it.
    fast: Duration,
}

/// An admitted request; report how it ended with [`Pass::done`] (dropped without it, e.g. a
/// client gone, it only leaves the count).
pub struct Pass {
    throttle: Arc<Throttle>,
    start: Instant,
}

/// How an admitted request ended, as far as the limit cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: its duration decides.
    Answered,
    /// Refused or timed out after it was admitted: the server took on too much.
    Overloaded,
    /// Neither (a client mistake): no signal.
    Neutral,
}

impl Throttle {
    /// `initial` in flight at first, between `min` and `max`; durations relative to `deadline`.
    pub fn new(initial: usize, max: usize, deadline: Duration) -> Arc<Throttle> {
        Arc::new(Throttle {
            limit: Mutex::new(initial.max(1) as f64),
            in_flight: AtomicUsize::new(0),
            min: 1.0,
            max: max.max(1) as f64,
            slow: deadline.mul_f64(0.7),
            fast: deadline.mul_f64(0.4),
        })
    }

    pub fn limit(&self) -> f64 {
        *self.limit.lock().expect("throttle lock")
    }

    /// Admits a request when fewer than the limit are in flight.
    pub fn try_enter(self: &Arc<Self>) -> Option<Pass> {
        let limit = self.limit() as usize;
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        loop {
            if cur >= limit.max(1) {
                return None;
            }
            match self
                .in_flight
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Some(Pass {
                        throttle: self.clone(),
                        start: Instant::now(),
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    fn record(&self, took: Duration, outcome: Outcome) {
        let mut l = self.limit.lock().expect("throttle lock");
        match outcome {
            Outcome::Overloaded => *l = (*l * 0.7).max(self.min),
            Outcome::Answered if took > self.slow => *l = (*l * 0.7).max(self.min),
            Outcome::Answered if took < self.fast => *l = (*l + 1.0 / *l).min(self.max),
            _ => {}
        }
    }
}

impl Pass {
    pub fn done(self, outcome: Outcome) {
        self.throttle.record(self.start.elapsed(), outcome);
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.throttle.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_grows_while_requests_are_fast_and_shrinks_when_they_are_not() {
        let t = Throttle::new(2, 16, Duration::from_millis(1000));
        let a = t.try_enter().unwrap();
        let b = t.try_enter().unwrap();
        assert!(t.try_enter().is_none(), "two in flight at a limit of 2");
        a.done(Outcome::Answered);
        b.done(Outcome::Answered);
        assert!(t.limit() > 2.5, "fast answers grow it: {}", t.limit());
        for _ in 0..40 {
            t.try_enter().unwrap().done(Outcome::Answered);
        }
        assert!(t.limit() > 8.0 && t.limit() <= 16.0, "{}", t.limit());
        let before = t.limit();
        t.try_enter().unwrap().done(Outcome::Overloaded);
        assert!((t.limit() - before * 0.7).abs() < 1e-9);
        // A client mistake says nothing about load.
        let l = t.limit();
        t.try_enter().unwrap().done(Outcome::Neutral);
        assert_eq!(t.limit(), l);
        // Never below one: some work always gets in.
        for _ in 0..50 {
            t.try_enter().unwrap().done(Outcome::Overloaded);
        }
        assert_eq!(t.limit(), 1.0);
        assert!(t.try_enter().is_some());
    }
}
