//! The online service, laid out along a request's path (TEI's split: HTTP router → batching
//! queue → model backend):
//!
//! - `http/`: connections, the route table, middleware, handlers, bodies, the error → status map
//!   and the OpenAPI document;
//! - `infer/`: the facade handlers call, each version's batching queue, and its model worker
//!   (which owns a `Ranker`, the model);
//! - `registry/`: which version answers (names → versions → workers, A/B splits), loading and
//!   polling;
//! - `evaluation/`: evaluations run by the admin routes (the bounded job table, cases, the run);
//! - `history/`: users' stored event histories, behind one trait (memory and Redis stores);
//! - `lifecycle`, `telemetry`, `config`: readiness and drain, metrics and log limits, settings.
//!
//! This file wires them together and runs the server from start to drain; it holds no logic of
//! its own parts.
pub mod config;
pub mod evaluation;
pub mod history;
pub mod http;
pub mod infer;
pub mod lifecycle;
pub mod registry;
pub mod telemetry;

use crate::model::repository::Repository;
use anyhow::{Context, Result};
use config::Config;
use evaluation::Evaluations;
use http::listener;
use http::parse_pool::ParsePool;
use http::state::AppState;
use infer::queue::BatchingConfig;
use infer::Infer;
use lifecycle::Lifecycle;
use registry::ab_split::AbSplit;
use registry::opener::{LoadSettings, ModelOpener};
use registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use telemetry::log_limit::LogLimit;
use telemetry::Metrics;

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

/// Worker threads per model version: the configured count, or (auto) as many as fill the CPU
/// quota's share of each model loaded at start with `threads` intra-op threads each, at least 1.
/// On 2 cores that is 2 workers of 1 thread: one worker leaves ~0.4 of a core idle while it
/// collects batches (README, "Where the CPU goes" under Benchmark).
fn workers_per_model(configured: usize, threads: usize, models: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        (crate::device::cpu_quota() / models.max(1) / threads.max(1)).max(1)
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
                .map_err(|e| anyhow::anyhow!("{e}"))
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
        let split = AbSplit::parse(spec).map_err(anyhow::Error::msg)?;
        reg.set_split(name, split)
            .map_err(|e| anyhow::anyhow!("splits.{name}: {e}"))?;
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
        .map_err(|e| anyhow::anyhow!("model.default: {e}"))?;
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
        max_header_bytes: cfg.server.max_header_bytes,
    };
    let metrics = Arc::new(Metrics::new());
    let repository = if cfg.model.repository.as_os_str().is_empty() {
        None
    } else {
        Some(Repository::open(&cfg.model.repository).map_err(anyhow::Error::msg)?)
    };
    let n_models = repository.as_ref().map_or(1, |r| r.models().len());
    let threads = worker_threads(cfg.model.intra_op_threads, n_models);
    let settings = LoadSettings {
        threads,
        batching: BatchingConfig {
            max_batch_size: cfg.batching.max_batch_size,
            retrieval: cfg.retrieval.mode,
            background_max_wait: Duration::from_millis(cfg.batching.background_max_wait_ms),
            max_delay: Duration::from_micros(cfg.batching.max_delay_us),
            max_queue_size: cfg.batching.max_queue_size,
            workers: workers_per_model(cfg.batching.workers_per_model, threads, n_models),
        },
    };
    let opener = ModelOpener {
        device: crate::device::parse_device(&cfg.model.device)?,
        retrieval: cfg.retrieval.clone(),
        max_weights_bytes: cfg.model.max_weights_bytes,
    };
    let state = Arc::new(AppState {
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        registry: Registry::new(repository, settings, Box::new(opener), metrics.clone()),
        infer: Infer::new(metrics.clone()),
        history: history::History::new(&cfg.history, metrics.clone())
            .map_err(anyhow::Error::msg)?,
        evaluations: Arc::new(Evaluations::new(
            cfg.admin.clone(),
            metrics.clone(),
            cfg.batching.max_batch_size,
        )),
        lifecycle: Lifecycle::default(),
        parse_pool: ParsePool::new(
            crate::device::or_cpu_quota(cfg.server.parse_threads),
            cfg.server.max_parse_waiting,
            Duration::from_millis(cfg.server.request_timeout_ms),
        ),
        body_budget: http::body_budget::BodyBudget::new(cfg.server.max_buffered_body_bytes),
        throttle: http::throttle::Throttle::new(
            2 * crate::device::or_cpu_quota(cfg.server.parse_threads),
            cfg.server.max_parse_waiting.max(1),
            Duration::from_millis(cfg.server.request_timeout_ms),
        ),
        refusal_log: LogLimit::new(cfg.logging.max_refusal_logs_per_sec),
    });

    // Load in the background so /health/live answers at once and /health/ready says 503 meanwhile.
    let load_state = state.clone();
    let loader = tokio::task::spawn_blocking(move || -> Result<()> {
        crate::device::configure_threads(crate::device::serving_threads(
            load_state.cfg.model.intra_op_threads,
        ));
        load_initial(&load_state)?;
        load_state.lifecycle.set_started();
        tracing::info!(default = %load_state.registry.default_model(), "models warmed up: ready");
        Ok(())
    });

    tracing::info!(%local, max_connections = limits.max_connections, "listening");
    on_listening(local);
    let (public, admin) = http::router::routers(state.clone());
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
    // Memory freed after a burst (bodies of an attack, an unloaded model) goes back to the system.
    let trimmer = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(telemetry::release_free_memory).await;
        }
    });
    // The history store's health, followed even without traffic (seqserve_history_store_up).
    let pinger = {
        let st = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let _ = st.history.ping().await;
            }
        })
    };
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
    state.lifecycle.begin_shutdown();
    state.evaluations.cancel_all();
    tracing::info!(
        in_flight = state.lifecycle.in_flight(),
        "shutdown requested: readiness 503, draining"
    );

    // 1. Announce: keep answering (503 for new work) until in-flight work is done, at least
    //    drain_announce_ms.
    let announce_until =
        (signalled_at + Duration::from_millis(cfg.server.drain_announce_ms)).min(deadline);
    tokio::time::sleep_until(announce_until).await;
    while state.lifecycle.in_flight() > 0 && tokio::time::Instant::now() < deadline {
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
    trimmer.abort();
    pinger.abort();
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
            if st.lifecycle.is_shutting_down() {
                break;
            }
            let st2 = st.clone();
            let _ = tokio::task::spawn_blocking(move || st2.registry.poll()).await;
        }
    }))
}
