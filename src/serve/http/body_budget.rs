//! The server-wide budget of request-body bytes buffered at once (server.max_buffered_body_bytes):
//! a thousand uploads stalled just short of their end once held 1.7 GB.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Request-body bytes held at once, all connections together.
pub struct BodyBudget {
    used: AtomicUsize,
    max: usize,
}

/// Bytes of the budget held by one body, given back when it is dropped.
pub struct Hold {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Whether `n` more bytes would fit now (a check, not a reservation).
    pub fn fits(&self, n: usize) -> bool {
        self.used.load(Ordering::SeqCst).saturating_add(n) <= self.max
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    pub fn hold(self: &Arc<Self>) -> Hold {
        Hold {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

impl Hold {
    /// Takes `n` more bytes of the budget, or none when they do not fit.
    pub fn grow(&mut self, n: usize) -> bool {
        let b = &self.budget;
        let mut cur = b.used.load(Ordering::SeqCst);
        loop {
            if cur.saturating_add(n) > b.max {
                return false;
            }
            match b
                .used
                .compare_exchange(cur, cur + n, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.bytes += n;
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let b = BodyBudget::new(100);
        let mut a = b.hold();
        let mut c = b.hold();
        assert!(a.grow(60));
        assert!(!c.grow(41), "over the budget");
        assert!(c.grow(40));
        assert!(!b.fits(1));
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(b.fits(60));
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
