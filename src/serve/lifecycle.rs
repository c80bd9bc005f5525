//! The server's life: starting (models loading), serving, draining. Readiness and the guard that
//! refuses new work read it; the HTTP middleware counts in-flight requests in it; `serve::run`
//! drives the drain. Also the signal that starts the drain.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[derive(Default)]
pub struct Lifecycle {
    /// The models configured at start are loaded and warmed up.
    started: AtomicBool,
    shutting_down: AtomicBool,
    /// Requests being handled other than health and metrics: what the drain waits for.
    in_flight: AtomicUsize,
}

/// Why new work is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServing {
    Starting,
    ShuttingDown,
}

impl std::fmt::Display for NotServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotServing::Starting => "model loading or warming up",
            NotServing::ShuttingDown => "shutting down",
        })
    }
}

impl Lifecycle {
    /// Whether new work may start.
    pub fn serving(&self) -> Result<(), NotServing> {
        if self.shutting_down.load(Ordering::SeqCst) {
            // In-flight requests finish; new ones are told to go elsewhere.
            return Err(NotServing::ShuttingDown);
        }
        if !self.started.load(Ordering::SeqCst) {
            return Err(NotServing::Starting);
        }
        Ok(())
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request as in-flight work while the guard lives.
    pub fn track(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(&self.in_flight)
    }
}

/// One in-flight request (see [`Lifecycle::track`]).
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves at SIGINT (Ctrl-C) or SIGTERM: what starts the drain.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_while_starting_and_draining_and_counts_in_flight_work() {
        let l = Lifecycle::default();
        assert_eq!(l.serving(), Err(NotServing::Starting));
        l.set_started();
        assert_eq!(l.serving(), Ok(()));
        {
            let _a = l.track();
            let _b = l.track();
            assert_eq!(l.in_flight(), 2);
        }
        assert_eq!(l.in_flight(), 0);
        l.begin_shutdown();
        assert_eq!(l.serving(), Err(NotServing::ShuttingDown));
    }
}
