//! The online service: HTTP router → batching queue → model worker thread (the split of
//! huggingface/text-embeddings-inference).
mod admin;
pub mod api;
mod body;
pub mod config;
mod error;
pub mod listener;
mod log_limit;
pub mod metrics;
pub mod queue;
mod routes;

pub use config::Config;

use crate::model::retrieval::Retrieval;
use crate::model::{Catalogue, Manifest, Model};
use anyhow::{Context, Result};
use error::ApiError;
use metrics::Metrics;
use queue::{BatchingConfig, QueueHandle};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What handlers need of the loaded model: its schema and catalogue (plain data, shared) and the
/// queue to its worker. The model itself lives on the worker thread.
pub struct Loaded {
    pub manifest: Arc<Manifest>,
    pub catalogue: Arc<Catalogue>,
    pub queue: QueueHandle,
    pub device: String,
    /// "exact" or "ann": how live requests are ranked.
    pub retrieval: &'static str,
}

pub struct AppState {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    loaded: OnceLock<Loaded>,
    warmed_up: Arc<AtomicBool>,
    shutting_down: AtomicBool,
    pub evaluations: admin::Jobs,
    /// Requests being handled other than health and metrics: what shutdown waits for.
    in_flight: AtomicUsize,
    parse_pool: body::ParsePool,
    refusal_log: log_limit::LogLimit,
}

impl AppState {
    fn is_ready(&self) -> bool {
        self.warmed_up.load(Ordering::SeqCst)
            && !self.shutting_down.load(Ordering::SeqCst)
            && self.loaded.get().is_some()
    }

    fn loaded(&self) -> Result<&Loaded, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            // In-flight requests finish; new ones are told to go elsewhere.
            self.metrics.refuse("not_ready");
            return Err(ApiError::not_ready("shutting down"));
        }
        match self.loaded.get() {
            Some(l) if self.warmed_up.load(Ordering::SeqCst) => Ok(l),
            _ => {
                self.metrics.refuse("not_ready");
                Err(ApiError::not_ready("model loading or warming up"))
            }
        }
    }
}

/// Serves until `shutdown` resolves, then drains, all within server.drain_timeout_secs of the signal:
/// 1. readiness answers 503 and new work 503 (with `Connection: close`), running evaluations are
///    cancelled, while the listener stays open — at least server.drain_announce_ms, and until
///    in-flight requests have finished — so pollers and load balancers see the 503 rather than a
///    refused connection;
/// 2. the listeners close; idle and half-open connections are closed at once, busy ones after their
///    response;
/// 3. the model worker finishes what is queued and stops.
///
/// `on_listening` receives the bound public address (tests bind port 0); the admin listener, when
/// admin.port is set, logs its own address.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let admin_listener = if cfg.admin.port != 0 {
        let addr = format!("{}:{}", cfg.server.host, cfg.admin.port);
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin.port)"))?;
        tracing::info!(local = %l.local_addr()?, "admin listening");
        Some(l)
    } else {
        None
    };
    let fd_limit = listener::raise_fd_limit();
    let limits = listener::ConnLimits {
        header_read: Duration::from_millis(cfg.server.header_read_timeout_ms),
        keep_alive: Duration::from_millis(cfg.server.keep_alive_timeout_ms),
        send: Duration::from_millis(cfg.server.send_timeout_ms),
        max_connections: listener::connection_cap(cfg.server.max_connections, fd_limit),
    };
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState {
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        loaded: OnceLock::new(),
        warmed_up: Arc::new(AtomicBool::new(false)),
        shutting_down: AtomicBool::new(false),
        evaluations: admin::Jobs::default(),
        in_flight: AtomicUsize::new(0),
        parse_pool: body::ParsePool::new(
            crate::device::or_cpu_quota(cfg.server.parse_threads),
            cfg.server.max_parse_waiting,
        ),
        refusal_log: log_limit::LogLimit::new(cfg.logging.max_refusal_logs_per_sec),
    });

    // Load in the background so /health/live answers at once and /health/ready says 503 meanwhile.
    let load_state = state.clone();
    let loader = tokio::task::spawn_blocking(move || -> Result<std::thread::JoinHandle<()>> {
        let cfg = &load_state.cfg;
        let device = crate::device::parse_device(&cfg.model.device)?;
        let threads = crate::device::configure_threads(crate::device::serving_threads(
            cfg.model.intra_op_threads,
        ));
        let mut model = Model::load(&cfg.model.path, device)?;
        if cfg.retrieval.mode == Retrieval::Ann {
            let path = cfg.retrieval.index_file(&cfg.model.path);
            let t0 = std::time::Instant::now();
            model
                .attach_index(
                    cfg.retrieval.params(),
                    &path,
                    crate::device::or_cpu_quota(0),
                )
                .map_err(|e| anyhow::anyhow!("approximate index: {e}"))?;
            tracing::info!(path = %path.display(), secs = t0.elapsed().as_secs_f64(), "approximate index ready");
        }
        let retrieval = model.retriever(cfg.retrieval.mode).kind().name();
        let device_name = crate::device::device_name(device);
        tracing::info!(
            model = %model.manifest.name, version = %model.manifest.version,
            device = %device_name, threads, items = model.catalogue.len(),
            "model loaded"
        );
        load_state
            .metrics
            .model_info
            .with_label_values(&[&model.manifest.name, &model.manifest.version, &device_name])
            .set(1.0);
        let manifest = Arc::new(model.manifest.clone());
        let catalogue = model.catalogue.clone();
        let warmed = load_state.warmed_up.clone();
        let (queue, worker) = queue::start(
            model,
            BatchingConfig {
                max_batch_size: cfg.batching.max_batch_size,
                retrieval: cfg.retrieval.mode,
                background_max_wait: Duration::from_millis(cfg.batching.background_max_wait_ms),
                max_delay: Duration::from_micros(cfg.batching.max_delay_us),
                max_queue_size: cfg.batching.max_queue_size,
            },
            load_state.metrics.clone(),
            move || {
                warmed.store(true, Ordering::SeqCst);
                tracing::info!("warm-up done: ready");
            },
        );
        let _ = load_state.loaded.set(Loaded {
            manifest,
            catalogue,
            queue,
            device: device_name,
            retrieval,
        });
        Ok(worker)
    });

    tracing::info!(%local, max_connections = limits.max_connections, "listening");
    on_listening(local);
    let (public, admin) = routes::routers(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(listener::serve(listener, public, limits, stop_rx.clone()));
    if let (Some(l), Some(r)) = (admin_listener, admin) {
        servers.spawn(listener::serve(l, r, limits, stop_rx.clone()));
    }

    // The signal: everything below must finish by its deadline.
    let (signal_tx, mut signal_rx) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    tokio::spawn(async move {
        shutdown.await;
        let _ = signal_tx.send(Some(tokio::time::Instant::now()));
    });
    let mut loader = loader;
    let mut worker = None;
    let signalled_at = loop {
        tokio::select! {
            r = &mut loader, if worker.is_none() => match r.context("model loader panicked")? {
                Ok(w) => worker = Some(w),
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return Err(e.context("cannot load the model"));
                }
            },
            r = signal_rx.wait_for(|s| s.is_some()) => break r.ok().and_then(|s| *s)
                .unwrap_or_else(tokio::time::Instant::now),
        }
    };
    let deadline = signalled_at + Duration::from_secs(cfg.server.drain_timeout_secs);
    state.shutting_down.store(true, Ordering::SeqCst);
    state.evaluations.cancel_all();
    tracing::info!(
        in_flight = state.in_flight.load(Ordering::SeqCst),
        "shutdown requested: readiness 503, draining"
    );

    // 1. Announce: keep answering (503 for new work) until in-flight work is done, at least
    //    drain_announce_ms.
    let announce_until =
        (signalled_at + Duration::from_millis(cfg.server.drain_announce_ms)).min(deadline);
    tokio::time::sleep_until(announce_until).await;
    while state.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 2. Close the listeners and the connections.
    let _ = stop_tx.send(true);
    let closed = tokio::time::timeout_at(deadline, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if closed.is_err() {
        tracing::warn!("drain timeout reached with connections still open: exiting");
        servers.abort_all();
    }
    // 3. Stop the model worker once its queue is empty.
    if let Some(l) = state.loaded.get() {
        l.queue.stop();
    }
    drop(state);
    if let Some(w) = worker {
        let joined = tokio::task::spawn_blocking(move || w.join());
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            tracing::warn!("model worker did not stop within the drain timeout");
        }
    } else {
        loader.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
