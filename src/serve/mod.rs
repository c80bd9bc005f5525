//! The online service: HTTP router → batching queue → model worker thread (the split of
//! huggingface/text-embeddings-inference).
mod admin;
pub mod api;
pub mod config;
mod error;
pub mod metrics;
pub mod queue;
mod routes;

pub use config::Config;

use crate::model::{Catalogue, Manifest, Model};
use anyhow::{Context, Result};
use error::ApiError;
use metrics::Metrics;
use queue::{BatchingConfig, QueueHandle};
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What handlers need of the loaded model: its schema and catalogue (plain data, shared) and the
/// queue to its worker. The model itself lives on the worker thread.
pub struct Loaded {
    pub manifest: Arc<Manifest>,
    pub catalogue: Arc<Catalogue>,
    pub queue: QueueHandle,
    pub device: String,
}

pub struct AppState {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    loaded: OnceLock<Loaded>,
    warmed_up: Arc<AtomicBool>,
    shutting_down: AtomicBool,
    pub evaluations: admin::Jobs,
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
            return Err(ApiError::not_ready("shutting down"));
        }
        match self.loaded.get() {
            Some(l) if self.warmed_up.load(Ordering::SeqCst) => Ok(l),
            _ => Err(ApiError::not_ready("model loading or warming up")),
        }
    }
}

/// Serves until `shutdown` resolves, then drains: readiness goes 503, new connections are refused,
/// in-flight and queued requests finish (up to server.drain_timeout_secs), the worker stops.
/// `on_listening` receives the bound address (tests bind port 0).
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
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState {
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        loaded: OnceLock::new(),
        warmed_up: Arc::new(AtomicBool::new(false)),
        shutting_down: AtomicBool::new(false),
        evaluations: admin::Jobs::default(),
    });

    // Load in the background so /health/live answers at once and /health/ready says 503 meanwhile.
    let load_state = state.clone();
    let loader = tokio::task::spawn_blocking(move || -> Result<std::thread::JoinHandle<()>> {
        let cfg = &load_state.cfg;
        let device = crate::device::parse_device(&cfg.model.device)?;
        let threads = crate::device::configure_threads(crate::device::serving_threads(
            cfg.model.intra_op_threads,
        ));
        let model = Model::load(&cfg.model.path, device)?;
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
        let catalogue = Arc::new(model.catalogue.clone());
        let warmed = load_state.warmed_up.clone();
        let (queue, worker) = queue::start(
            model,
            BatchingConfig {
                max_batch_size: cfg.batching.max_batch_size,
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
        });
        Ok(worker)
    });

    tracing::info!(%local, "listening");
    on_listening(local);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let (drain_state, signal_tx) = (state.clone(), stop_tx.clone());
    tokio::spawn(async move {
        shutdown.await;
        drain_state.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!("shutdown requested: draining");
        let _ = signal_tx.send(true);
    });
    let mut stop_for_server = stop_rx.clone();
    let server =
        axum::serve(listener, routes::router(state.clone())).with_graceful_shutdown(async move {
            let _ = stop_for_server.wait_for(|s| *s).await;
        });
    let mut server_task = tokio::spawn(server.into_future());
    let mut loader = loader;
    let worker = tokio::select! {
        r = &mut loader => match r.context("model loader panicked")? {
            Ok(worker) => worker,
            Err(e) => {
                let _ = stop_tx.send(true);
                return Err(e.context("cannot load the model"));
            }
        },
        r = &mut server_task => {
            // Shut down before the model finished loading.
            r.context("server task panicked")??;
            return Ok(());
        }
    };
    let drain = Duration::from_secs(cfg.server.drain_timeout_secs);
    let mut stop_for_timer = stop_rx.clone();
    let timer = async move {
        let _ = stop_for_timer.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = &mut server_task => r.context("server task panicked")??,
        _ = timer => {
            tracing::warn!("drain timeout reached: exiting with requests still in flight");
            return Ok(());
        }
    }
    // The router (and with it every queue handle) is gone: the worker finishes what is queued, then
    // stops. Wait for it, still within the drain budget.
    drop(state);
    let joined = tokio::task::spawn_blocking(move || worker.join());
    if tokio::time::timeout(drain, joined).await.is_err() {
        tracing::warn!("model worker did not stop within the drain timeout");
    }
    tracing::info!("stopped");
    Ok(())
}
