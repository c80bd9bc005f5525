//! The accept loop and HTTP/1.1 connections: what axum::serve does, plus what an exposed server needs
//! and axum::serve lacks:
//! - a header-read timeout (a request head must be complete within `header_read` of its first byte)
//!   and an idle keep-alive timeout (a connection with no request in progress, including one that
//!   never sent a byte, is closed after `keep_alive`) — without them a client that never finishes its
//!   headers held a connection and a descriptor for good;
//! - a connection cap below the descriptor limit, so the process never hits EMFILE itself (it must
//!   still open holdout files), and a back-off instead of a busy loop when accept fails anyway;
//! - when every slot is taken, the stalest idle or half-open connection is closed to make room;
//! - on shutdown, idle and half-open connections are closed at once, busy ones after their response.
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read: Duration,
    pub keep_alive: Duration,
    /// A write that makes no progress for this long (a client that never reads) fails.
    pub send: Duration,
    pub max_connections: usize,
    /// The largest request head hyper buffers (431 beyond): server.max_header_bytes.
    pub max_header_bytes: usize,
}

/// Raises the soft open-file limit to the hard limit (as Go's runtime does) and returns the soft
/// limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

/// How long an idle connection may still bring a request once the listener stops.
const IDLE_GRACE: Duration = Duration::from_millis(250);

/// Connections allowed at once: the configured cap, kept 64 descriptors below the open-file limit
/// (model files, holdouts, the listener, logs).
pub fn connection_cap(configured: usize, fd_limit: u64) -> usize {
    let by_fds = fd_limit.saturating_sub(64).max(16);
    configured.min(by_fds.min(usize::MAX as u64) as usize)
}

/// Accepts until `stop` turns true, then closes connections and returns once every one has closed
/// (the caller bounds this with its drain deadline).
///
/// When every connection slot is taken and a new connection is waiting, the connection stalled the
/// longest (see [`evict_stalest`]) is closed to make room: a flood of half-open connections then
/// costs its senders their connections, not the service its new clients. On stop, connections with no request in progress
/// close at once (a half-open one would otherwise hold the exit until its header timeout); busy ones
/// finish their response first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open: Arc<Mutex<HashMap<u64, Open>>> = Arc::default();
    let mut next_id = 0u64;
    let mut last_warn: Option<std::time::Instant> = None;
    // A connection must have been idle, stuck in its head or trickling its body this long before it
    // can be evicted (never the client that just connected).
    let min_stale = limits.header_read.min(Duration::from_secs(1));
    'accept: loop {
        // Accept first: a slot is fought over only when a connection is really waiting for one.
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM: the pending connection stays in the backlog; wait
                    // for descriptors to come back instead of spinning on accept.
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        last_warn = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let permit = loop {
            if let Ok(p) = slots.clone().try_acquire_owned() {
                break p;
            }
            evict_stalest(&open, min_stale);
            tokio::select! {
                p = slots.clone().acquire_owned() => break p.expect("semaphore never closed"),
                // Busy connections may become evictable (stale) later: look again.
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stopped(&mut stop) => break 'accept,
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Mutex::new(Activity::new()));
        let evict = Arc::new(Notify::new());
        next_id += 1;
        let id = next_id;
        open.lock().expect("connections lock").insert(
            id,
            Open {
                activity: activity.clone(),
                evict: evict.clone(),
            },
        );
        let io = TokioIo::new(TimedStream::new(stream, activity.clone(), limits));
        let router = router.clone();
        let act = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let busy = Busy::begin(act.clone());
            req.extensions_mut().insert(ConnHandle(act.clone()));
            let router = router.clone();
            async move {
                let resp = router.oneshot(req.map(axum::body::Body::new)).await;
                drop(busy);
                resp
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // Our TimedStream enforces the head timeout from the first byte, and the idle timeout
            // between requests; hyper's own timer would count idle time as header time.
            .header_read_timeout(None)
            // Bounds the connection's read buffer: a request head longer than this is refused
            // (431) instead of buffered (hyper's default is ~400 KB a connection).
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(io, service);
        let (mut stop, open) = (stop.clone(), open.clone());
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = evict.notified() => {}
                _ = stopped(&mut stop) => {
                    let idle = activity.lock().expect("activity lock").in_flight == 0;
                    if idle {
                        // A keep-alive client may be sending its next request right now: give it
                        // a moment to arrive and be answered (503, `Connection: close`) rather
                        // than a reset; a connection that stays silent is closed after it.
                        if tokio::time::timeout(IDLE_GRACE, conn.as_mut()).await.is_err() {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    } else {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            }
            open.lock().expect("connections lock").remove(&id);
            drop(permit);
        });
    }
    drop(listener);
    // Every slot back = every connection closed.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

/// One open connection, as the accept loop sees it.
struct Open {
    activity: Arc<Mutex<Activity>>,
    evict: Arc<Notify>,
}

/// Closes the connection that has been stalled the longest — idle, stuck in its request head, or
/// trickling a request body — if it has been so for at least `min_stale`. A connection whose
/// request is being computed is never evicted.
fn evict_stalest(open: &Mutex<HashMap<u64, Open>>, min_stale: Duration) {
    let now = Instant::now();
    let open = open.lock().expect("connections lock");
    let stalest = open
        .values()
        .filter_map(|o| {
            let a = o.activity.lock().expect("activity lock");
            let since = a.stalled_since()?;
            (!a.evicted && now.duration_since(since) >= min_stale).then_some((since, o))
        })
        .min_by_key(|(since, _)| *since);
    if let Some((_, o)) = stalest {
        o.activity.lock().expect("activity lock").evicted = true;
        o.evict.notify_one();
    }
}

/// The connection a request arrived on, as a request extension: body readers mark the time they
/// spend waiting for a body, which makes a trickling upload evictable like a stalled head.
#[derive(Clone)]
pub struct ConnHandle(Arc<Mutex<Activity>>);

impl ConnHandle {
    pub fn body_reading(&self, reading: bool) {
        let mut a = self.0.lock().expect("activity lock");
        a.body_since = reading.then(Instant::now);
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What a connection is doing, for its timeouts.
struct Activity {
    /// Requests of this connection being handled.
    in_flight: usize,
    /// When the connection last became idle (accepted, or its last request finished).
    idle_since: Instant,
    /// When the first byte of the next request head arrived, while idle.
    head_started: Option<Instant>,
    /// When the handler started waiting for the request body (None when not waiting).
    body_since: Option<Instant>,
    /// Already chosen for eviction.
    evicted: bool,
    /// The connection task, parked on a read while a request was in progress (no deadline then):
    /// woken when the request ends so that its idle deadline is armed. hyper does not poll the
    /// read side again by itself after writing a response.
    parked: Option<Waker>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: 0,
            idle_since: Instant::now(),
            head_started: None,
            body_since: None,
            evicted: false,
            parked: None,
        }
    }

    /// Since when the connection has made the server wait on its client (None while a request is
    /// being computed).
    fn stalled_since(&self) -> Option<Instant> {
        if self.in_flight == 0 {
            Some(self.idle_since)
        } else {
            self.body_since
        }
    }

    /// When an idle connection times out; None while a request is being handled (its body and
    /// deadline are bounded by the handlers).
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.in_flight > 0 {
            return None;
        }
        Some(match self.head_started {
            Some(t) => t + limits.header_read,
            None => self.idle_since + limits.keep_alive,
        })
    }
}

/// Marks a request in progress on its connection for as long as it lives.
struct Busy(Arc<Mutex<Activity>>);

impl Busy {
    fn begin(a: Arc<Mutex<Activity>>) -> Busy {
        {
            let mut g = a.lock().expect("activity lock");
            g.in_flight += 1;
            g.head_started = None;
        }
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut g = self.0.lock().expect("activity lock");
        g.in_flight -= 1;
        g.body_since = None;
        if g.in_flight == 0 {
            g.idle_since = Instant::now();
            if let Some(w) = g.parked.take() {
                w.wake();
            }
        }
    }
}

/// A TCP stream whose reads fail with TimedOut when the connection outstays its idle or header
/// deadline; hyper then closes the connection.
struct TimedStream {
    inner: TcpStream,
    activity: Arc<Mutex<Activity>>,
    limits: ConnLimits,
    timer: Pin<Box<Sleep>>,
    /// Since when writes have made no progress (the client is not reading), and its timer.
    write_stalled: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

impl TimedStream {
    fn new(inner: TcpStream, activity: Arc<Mutex<Activity>>, limits: ConnLimits) -> TimedStream {
        TimedStream {
            inner,
            activity,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.keep_alive)),
            write_stalled: None,
            write_timer: Box::pin(tokio::time::sleep(limits.send)),
        }
    }

    /// A write's outcome, failing it once writes have made no progress for `limits.send`.
    fn check_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending => {
                let since = *self.write_stalled.get_or_insert_with(Instant::now);
                let deadline = since + self.limits.send;
                if self.write_timer.deadline() != deadline {
                    self.write_timer.as_mut().reset(deadline);
                }
                match self.write_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading (server.send_timeout_ms)",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.write_stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut a = this.activity.lock().expect("activity lock");
                    if a.in_flight == 0 && a.head_started.is_none() {
                        a.head_started = Some(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = {
                    let mut a = this.activity.lock().expect("activity lock");
                    let d = a.deadline(&this.limits);
                    if d.is_none() {
                        a.parked = Some(cx.waker().clone());
                    }
                    d
                };
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle or request head too slow",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_then_head_then_busy_deadlines() {
        let limits = ConnLimits {
            header_read: Duration::from_secs(2),
            keep_alive: Duration::from_secs(30),
            send: Duration::from_secs(10),
            max_connections: 10,
            max_header_bytes: 16 << 10,
        };
        let mut a = Activity::new();
        let t0 = a.idle_since;
        assert_eq!(a.deadline(&limits), Some(t0 + limits.keep_alive));
        let t1 = t0 + Duration::from_secs(1);
        a.head_started = Some(t1);
        assert_eq!(a.deadline(&limits), Some(t1 + limits.header_read));
        a.in_flight = 1;
        assert_eq!(
            a.deadline(&limits),
            None,
            "a request in progress has no idle deadline"
        );
        assert_eq!(connection_cap(4096, 1024), 960);
        assert_eq!(connection_cap(100, 1 << 20), 100);
    }
}
