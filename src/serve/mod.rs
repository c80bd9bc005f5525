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
mod models;
pub mod openapi;
pub mod queue;
pub mod registry;
mod routes;
pub mod split;

pub use config::Config;

use crate::model::repository::Repository;
use anyhow::{Context, Result};
use error::ApiError;
use metrics::Metrics;
use queue::BatchingConfig;
use registry::{LoadSettings, Registry};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct AppState {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    /// Every loaded model version; routes ask it which one answers.
    pub registry: Registry,
    /// The models configured at start are loaded and warmed up.
    started: AtomicBool,
    shutting_down: AtomicBool,
    pub evaluations: admin::Jobs,
    /// Requests being handled other than health and metrics: what shutdown waits for.
    in_flight: AtomicUsize,
    parse_pool: body::ParsePool,
    refusal_log: log_limit::LogLimit,
}

impl AppState {
    fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
            && !self.shutting_down.load(Ordering::SeqCst)
            && self.registry.can_serve_default()
    }

    /// Whether new work may start: 503 while starting or shutting down.
    fn check_serving(&self) -> Result<&Registry, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            // In-flight requests finish; new ones are told to go elsewhere.
            self.metrics.refuse("not_ready");
            return Err(ApiError::not_ready("shutting down"));
        }
        if !self.started.load(Ordering::SeqCst) {
            self.metrics.refuse("not_ready");
            return Err(ApiError::not_ready("model loading or warming up"));
        }
        Ok(&self.registry)
    }
}

/// Intra-op threads per model worker: the configured count, or (auto) the serving budget shared
/// between the models loaded at start, at least 1 each: two busy workers with the whole budget
/// each would oversubscribe the cores (see the README's measurement).
fn worker_threads(configured: usize, models: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        (crate::device::serving_threads(0) / models.max(1)).max(1)
    }
}

/// Loads what the configuration names: `model.path`, or every model of `model.repository` at its
/// newest version that loads (an older one when the newest fails, so a bad upload cannot stop a
/// restart); then the default model and the configured splits.
fn load_initial(st: &AppState) -> Result<()> {
    let cfg = &st.cfg;
    let reg = &st.registry;
    match &reg.repository {
        None => {
            let m = crate::model::Manifest::read(&cfg.model.path.join(crate::model::MANIFEST_FILE))
                .with_context(|| format!("cannot load the model {}", cfg.model.path.display()))?;
            reg.load_dir(&m.name, &m.version, cfg.model.path.clone(), true, false)
                .map_err(|e| anyhow::anyhow!("{}", ApiError::from(e).message))
                .with_context(|| format!("cannot load the model {}", cfg.model.path.display()))?;
        }
        Some(repo) => {
            let names = repo.models();
            if names.is_empty() {
                anyhow::bail!(
                    "model repository {} holds no <name>/<version>/model.json",
                    repo.root.display()
                );
            }
            for name in &names {
                let mut loaded = false;
                for v in repo.versions(name).iter().rev() {
                    match reg.load(name, Some(v), true, false) {
                        Ok(_) => {
                            loaded = true;
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(model = %name, version = %v, "trying the previous version")
                        }
                    }
                }
                if !loaded {
                    tracing::error!(model = %name, "no version of this model loads: not served");
                }
            }
        }
    }
    for (name, spec) in &cfg.splits {
        let split = split::Split::parse(spec).map_err(anyhow::Error::msg)?;
        reg.set_split(name, split)
            .map_err(|e| anyhow::anyhow!("splits.{name}: {}", e.message))?;
    }
    let snap = reg.snapshot();
    let default = if !cfg.model.default.is_empty() {
        cfg.model.default.clone()
    } else if snap.models.len() == 1 {
        snap.models[0].0.clone()
    } else if snap.models.is_empty() {
        anyhow::bail!("no model could be loaded");
    } else {
        anyhow::bail!(
            "{} models are served ({}): set model.default (--default-model) to say which answers requests that name none",
            snap.models.len(),
            snap.models.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(", ")
        );
    };
    reg.set_default_model(&default)
        .map_err(|e| anyhow::anyhow!("model.default: {}", e.message))?;
    Ok(())
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
    let repository = if cfg.model.repository.as_os_str().is_empty() {
        None
    } else {
        Some(Repository::open(&cfg.model.repository).map_err(anyhow::Error::msg)?)
    };
    let n_models = repository.as_ref().map_or(1, |r| r.models().len());
    let settings = LoadSettings {
        device: crate::device::parse_device(&cfg.model.device)?,
        threads: worker_threads(cfg.model.intra_op_threads, n_models),
        batching: BatchingConfig {
            max_batch_size: cfg.batching.max_batch_size,
            retrieval: cfg.retrieval.mode,
            background_max_wait: Duration::from_millis(cfg.batching.background_max_wait_ms),
            max_delay: Duration::from_micros(cfg.batching.max_delay_us),
            max_queue_size: cfg.batching.max_queue_size,
        },
        retrieval: cfg.retrieval.clone(),
    };
    let state = Arc::new(AppState {
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        registry: Registry::new(repository, settings, metrics.clone()),
        started: AtomicBool::new(false),
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
    let loader = tokio::task::spawn_blocking(move || -> Result<()> {
        crate::device::configure_threads(crate::device::serving_threads(
            load_state.cfg.model.intra_op_threads,
        ));
        load_initial(&load_state)?;
        load_state.started.store(true, Ordering::SeqCst);
        tracing::info!(default = %load_state.registry.default_model(), "models warmed up: ready");
        Ok(())
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
    let mut loaded = false;
    let mut poller = None;
    let signalled_at = loop {
        tokio::select! {
            r = &mut loader, if !loaded => match r.context("model loader panicked")? {
                Ok(()) => {
                    loaded = true;
                    poller = start_polling(&state);
                }
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return Err(e.context("cannot load the models"));
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
    // 3. Stop the model workers once their queues are empty.
    if let Some(p) = poller {
        p.abort();
    }
    let workers = state.registry.stop_all();
    drop(state);
    if !loaded {
        loader.abort();
    }
    let joined = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    });
    if tokio::time::timeout_at(deadline, joined).await.is_err() {
        tracing::warn!("model workers did not stop within the drain timeout");
    }
    tracing::info!("stopped");
    Ok(())
}

/// model.poll_interval_secs > 0: scans the repository at that interval (one scan at a time, on a
/// blocking thread: a load takes seconds).
fn start_polling(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    let secs = state.cfg.model.poll_interval_secs;
    if secs == 0 || state.registry.repository.is_none() {
        return None;
    }
    let st = state.clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(secs));
        tick.tick().await;
        loop {
            tick.tick().await;
            if st.shutting_down.load(Ordering::SeqCst) {
                break;
            }
            let st2 = st.clone();
            let _ = tokio::task::spawn_blocking(move || st2.registry.poll()).await;
        }
    }))
}
