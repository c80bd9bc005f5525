//! The model registry: every loaded model version, each owning its batching worker; which version
//! answers a request (an explicit version, an A/B split, or the model's default); and loading,
//! default switches and unloading at run time without downtime. Routes ask the registry; nothing
//! else holds a model.
//!
//! A swap: the new version is loaded and warmed up beside the old one while the old one serves;
//! then one write under the table's lock makes it the default. A request routed before that holds
//! the old version's `Arc<Served>` and finishes there. An unloaded version leaves the table at
//! once; its worker drains what was queued, exits when the last request holding it has its
//! answer, and drops the model (its memory) and its metric series.
use super::error::ApiError;
use super::metrics::Metrics;
use super::queue::{self, BatchingConfig, QueueHandle};
use super::split::Split;
use crate::model::repository::{compare_versions, Repository};
use crate::model::retrieval::Retrieval;
use crate::model::{Catalogue, Manifest, Model};
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};
use tch::Device;

/// A loaded, warmed-up model version: what handlers need (plain data) and the queue to its worker.
pub struct Served {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub manifest: Arc<Manifest>,
    pub catalogue: Arc<Catalogue>,
    pub queue: QueueHandle,
    pub device: String,
    /// "exact" or "ann": how live requests are ranked.
    pub retrieval: &'static str,
    pub threads: usize,
    pub loaded_at_unix: u64,
    pub load_seconds: f64,
}

/// How the registry loads versions (fixed at start).
pub struct LoadSettings {
    pub device: Device,
    pub threads: usize,
    pub batching: BatchingConfig,
    pub retrieval: super::config::RetrievalSection,
}

struct ModelEntry {
    /// Oldest first (repository order).
    versions: Vec<Arc<Served>>,
    default_version: String,
}

impl ModelEntry {
    fn get(&self, version: &str) -> Option<&Arc<Served>> {
        self.versions.iter().find(|s| s.version == version)
    }
}

#[derive(Default)]
struct Table {
    models: BTreeMap<String, ModelEntry>,
    default_model: String,
    splits: BTreeMap<String, Split>,
}

/// A version being loaded, or one that failed (kept so /models can say why).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoadEvent {
    pub model: String,
    pub version: String,
    /// "loading" or "failed".
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at_unix: u64,
    /// The version's files when it failed (see Repository::stamp): polling retries it when they change.
    #[serde(skip)]
    pub stamp: String,
}

/// An unloaded version whose worker may still be finishing its queue.
struct Retired {
    name: String,
    version: String,
    exited: Arc<AtomicBool>,
}

pub struct Registry {
    table: RwLock<Table>,
    pub repository: Option<Repository>,
    settings: LoadSettings,
    metrics: Arc<Metrics>,
    events: Mutex<Vec<LoadEvent>>,
    retired: Mutex<Vec<Retired>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// One load at a time: two models loading at once would double peak memory and halve the
    /// cores left to live traffic.
    load_lock: Mutex<()>,
}

/// What a load did: the version, whether this call loaded it (else it was already loaded, and
/// only the default switch applied), and whether it is its model's default afterwards.
pub struct LoadOutcome {
    pub served: Arc<Served>,
    pub newly_loaded: bool,
    pub is_default: bool,
}

/// Where a request was routed.
pub struct Route {
    pub served: Arc<Served>,
    /// The split that chose the arm, when one did.
    pub split: Option<String>,
}

#[derive(Debug)]
pub enum LoadError {
    /// No such model or version on disk, or a bad name (404 / 422).
    NotFound(String),
    /// The files are there but do not make a usable model (bad files, non-finite weights...).
    Failed(String),
    /// Admin loading needs a repository.
    NoRepository,
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> ApiError {
        match e {
            LoadError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "model_not_found", m),
            LoadError::Failed(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "load_failed",
                format!("{m}; the versions already loaded keep serving"),
            ),
            LoadError::NoRepository => ApiError::new(
                StatusCode::CONFLICT,
                "no_repository",
                "this server serves model.path alone: set model.repository to load versions at run time",
            ),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn conflict(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", msg)
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "model_not_found", msg)
}

impl Registry {
    pub fn new(
        repository: Option<Repository>,
        settings: LoadSettings,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            table: RwLock::new(Table::default()),
            repository,
            settings,
            metrics,
            events: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            load_lock: Mutex::new(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Which version answers: `version` when given (exact), else the split named `model` picks an
    /// arm by `key`, else the model's default version. `model` absent: the configured default.
    pub fn route(
        &self,
        model: Option<&str>,
        version: Option<&str>,
        key: Option<&str>,
    ) -> Result<Route, ApiError> {
        let t = self.read();
        let name = model.unwrap_or(&t.default_model);
        let (name, version, split) = match (version, t.splits.get(name)) {
            (None, Some(s)) => {
                let arm = s.pick(name, key);
                (arm.model.as_str(), arm.version.as_deref(), Some(name))
            }
            _ => (name, version, None),
        };
        let entry = t.models.get(name).ok_or_else(|| {
            not_found(format!(
                "no model {name:?} is loaded (GET /models lists them: {})",
                t.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let v = version.unwrap_or(&entry.default_version);
        let served = entry.get(v).cloned().ok_or_else(|| {
            not_found(format!(
                "model {name:?} has no loaded version {v:?} (loaded: {})",
                entry
                    .versions
                    .iter()
                    .map(|s| s.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(Route {
            served,
            split: split.map(str::to_string),
        })
    }

    /// A loaded version without splits (evaluation names exactly what it evaluates).
    pub fn exact(&self, model: &str, version: Option<&str>) -> Result<Arc<Served>, ApiError> {
        let t = self.read();
        if version.is_none() && !t.models.contains_key(model) && t.splits.contains_key(model) {
            // Not found: no model has this name (a split does, and this asks for a model).
            return Err(not_found(format!(
                "{model:?} is an A/B split, not a model: name a model (and version)"
            )));
        }
        drop(t);
        self.route(Some(model), version, None).map(|r| r.served)
    }

    /// True when the default model can answer.
    pub fn can_serve_default(&self) -> bool {
        self.route(None, None, Some("")).is_ok()
    }

    pub fn default_model(&self) -> String {
        self.read().default_model.clone()
    }

    /// Sets the model (or split) answering requests that name none.
    pub fn set_default_model(&self, name: &str) -> Result<(), ApiError> {
        let mut t = self.write();
        if !t.models.contains_key(name) && !t.splits.contains_key(name) {
            return Err(not_found(format!("no model or split {name:?} is loaded")));
        }
        t.default_model = name.to_string();
        Ok(())
    }

    /// Makes a loaded version its model's default (atomically: the next request routes to it).
    pub fn set_default_version(&self, name: &str, version: &str) -> Result<(), ApiError> {
        let mut t = self.write();
        let entry = t
            .models
            .get_mut(name)
            .ok_or_else(|| not_found(format!("no model {name:?} is loaded")))?;
        if entry.get(version).is_none() {
            return Err(not_found(format!(
                "model {name:?} has no loaded version {version:?}; load it first"
            )));
        }
        entry.default_version = version.to_string();
        drop(t);
        self.publish_info();
        Ok(())
    }

    /// Arms must name loaded models (404 otherwise, checked first: a missing model is the
    /// answer to give even when the split has other faults), then have a valid shape (422).
    pub fn set_split(&self, name: &str, split: Split) -> Result<(), ApiError> {
        let mut t = self.write();
        for (i, a) in split.arms.iter().enumerate() {
            let Some(e) = t.models.get(&a.model) else {
                return Err(not_found(format!(
                    "arms[{i}]: no model {:?} is loaded",
                    a.model
                )));
            };
            if let Some(v) = &a.version {
                if e.get(v).is_none() {
                    return Err(not_found(format!(
                        "arms[{i}]: model {:?} has no loaded version {v:?}",
                        a.model
                    )));
                }
            }
        }
        split.check().map_err(ApiError::validation)?;
        t.splits.insert(name.to_string(), split);
        Ok(())
    }

    pub fn remove_split(&self, name: &str) -> Result<(), ApiError> {
        let mut t = self.write();
        if t.default_model == name && !t.models.contains_key(name) {
            return Err(conflict(format!(
                "{name:?} is the default model: set another default first (PUT /default)"
            )));
        }
        t.splits
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(format!("no split {name:?}")))
    }

    /// Loads `name` at `version` (the repository's newest when `None`) beside what serves, warms it
    /// up, then adds it; `make_default` switches the model's traffic to it in the same step, and
    /// `retire_previous` then unloads the version that was the default. Blocking (minutes for a
    /// large model): call from a blocking thread. Already loaded: only the default switch applies.
    pub fn load(
        &self,
        name: &str,
        version: Option<&str>,
        make_default: bool,
        retire_previous: bool,
    ) -> Result<LoadOutcome, LoadError> {
        let repo = self.repository.as_ref().ok_or(LoadError::NoRepository)?;
        let (version, dir) = repo.locate(name, version).map_err(LoadError::NotFound)?;
        self.load_dir(name, &version, dir, make_default, retire_previous)
    }

    /// [`Registry::load`] for a known directory (also how `model.path` is served).
    pub fn load_dir(
        &self,
        name: &str,
        version: &str,
        dir: PathBuf,
        make_default: bool,
        retire_previous: bool,
    ) -> Result<LoadOutcome, LoadError> {
        let _one_at_a_time = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        let existing = self
            .read()
            .models
            .get(name)
            .and_then(|e| e.get(version).cloned());
        let newly_loaded = existing.is_none();
        let served = match existing {
            Some(s) => s,
            None => {
                self.event(name, version, "loading", None);
                match self.start_version(name, version, dir) {
                    Ok(s) => {
                        self.clear_event(name, version);
                        self.metrics.model_loads.with_label_values(&["ok"]).inc();
                        s
                    }
                    Err(e) => {
                        self.event(name, version, "failed", Some(e.clone()));
                        self.metrics
                            .model_loads
                            .with_label_values(&["failed"])
                            .inc();
                        tracing::error!(model = name, version, error = %e, "model version failed to load; what was serving keeps serving");
                        return Err(LoadError::Failed(e));
                    }
                }
            }
        };
        let (previous, is_default) = {
            let mut t = self.write();
            let first_model = t.models.is_empty();
            let entry = t
                .models
                .entry(name.to_string())
                .or_insert_with(|| ModelEntry {
                    versions: Vec::new(),
                    default_version: version.to_string(),
                });
            if entry.get(version).is_none() {
                entry.versions.push(served.clone());
                entry
                    .versions
                    .sort_by(|a, b| compare_versions(&a.version, &b.version));
            }
            let previous = entry.default_version.clone();
            if make_default {
                entry.default_version = version.to_string();
            }
            let is_default = entry.default_version == version;
            if first_model && t.default_model.is_empty() {
                t.default_model = name.to_string();
            }
            (previous, is_default)
        };
        self.publish_info();
        tracing::info!(
            model = name, version, default = make_default, device = %served.device,
            threads = served.threads, items = served.catalogue.len(), secs = served.load_seconds,
            "model version ready"
        );
        if retire_previous && make_default && previous != version {
            if let Err(e) = self.unload(name, &previous) {
                tracing::warn!(model = name, version = %previous, error = %e.message, "previous version left loaded");
            }
        }
        Ok(LoadOutcome {
            served,
            newly_loaded,
            is_default,
        })
    }

    fn start_version(
        &self,
        name: &str,
        version: &str,
        dir: PathBuf,
    ) -> Result<Arc<Served>, String> {
        let t0 = Instant::now();
        let s = &self.settings;
        let mut model = Model::load(&dir, s.device).map_err(|e| e.to_string())?;
        if s.retrieval.mode == Retrieval::Ann {
            let path = s.retrieval.index_file(&dir);
            model
                .attach_index(s.retrieval.params(), &path, crate::device::or_cpu_quota(0))
                .map_err(|e| format!("approximate index: {e}"))?;
        }
        let retrieval = model.retriever(s.retrieval.mode).kind().name();
        let manifest = Arc::new(model.manifest.clone());
        let catalogue = model.catalogue.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let (queue, worker) = queue::start(
            model,
            s.batching.clone(),
            self.metrics.clone(),
            self.metrics.for_version(name, version),
            s.threads,
            move || {
                let _ = ready_tx.send(());
            },
        )
        .map_err(|e| format!("cannot start the model worker: {e}"))?;
        if ready_rx.recv().is_err() {
            // The worker died in warm-up (it panicked): its error is in the log.
            let _ = worker.join();
            self.metrics.release_version(name, version);
            return Err("warm-up forward pass failed (see the log)".into());
        }
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
        Ok(Arc::new(Served {
            name: name.to_string(),
            version: version.to_string(),
            path: dir,
            manifest,
            catalogue,
            queue,
            device: crate::device::device_name(s.device),
            retrieval,
            threads: s.threads,
            loaded_at_unix: unix_now(),
            load_seconds: (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        }))
    }

    /// Takes a version out of service. Refused (409) for a version traffic still needs: the
    /// model's default while other versions are loaded, the last version of the default model,
    /// or an arm of a split.
    pub fn unload(&self, name: &str, version: &str) -> Result<(), ApiError> {
        let mut t = self.write();
        let default_model = t.default_model.clone();
        let is_default = t
            .models
            .get(name)
            .is_some_and(|e| e.default_version == version);
        for (split, s) in &t.splits {
            let used = s.arms.iter().any(|a| {
                a.model == name
                    && (a.version.as_deref() == Some(version)
                        || (a.version.is_none() && is_default))
            });
            if used {
                return Err(conflict(format!(
                    "{name} {version} is an arm of split {split:?}: change the split first"
                )));
            }
        }
        let entry = t
            .models
            .get_mut(name)
            .ok_or_else(|| not_found(format!("no model {name:?} is loaded")))?;
        let pos = entry
            .versions
            .iter()
            .position(|s| s.version == version)
            .ok_or_else(|| {
                not_found(format!("model {name:?} has no loaded version {version:?}"))
            })?;
        if entry.default_version == version && entry.versions.len() > 1 {
            return Err(conflict(format!(
                "{version} is {name}'s default version: make another version the default first (PUT /models/{name}/default)"
            )));
        }
        if entry.versions.len() == 1 && default_model == name {
            return Err(conflict(format!(
                "{name} is the default model and {version} its only version: set another default model first (PUT /default)"
            )));
        }
        let served = entry.versions.remove(pos);
        if entry.versions.is_empty() {
            t.models.remove(name);
        }
        drop(t);
        let _ = self
            .metrics
            .model_info
            .remove_label_values(&[name, version, &served.device]);
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Retired {
                name: name.to_string(),
                version: version.to_string(),
                exited: served.queue.exited(),
            });
        tracing::info!(
            model = name,
            version,
            "model version unloaded from routing; its worker finishes its queue"
        );
        // Requests already routed hold their own Arc: the worker exits when the last one is done.
        Ok(())
    }

    fn publish_info(&self) {
        let t = self.read();
        for e in t.models.values() {
            for s in &e.versions {
                let v = if s.version == e.default_version {
                    2.0
                } else {
                    1.0
                };
                self.metrics
                    .model_info
                    .with_label_values(&[&s.name, &s.version, &s.device])
                    .set(v);
            }
        }
    }

    fn event(&self, name: &str, version: &str, state: &'static str, error: Option<String>) {
        let stamp = self
            .repository
            .as_ref()
            .map(|r| r.stamp(name, version))
            .unwrap_or_default();
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        ev.retain(|e| !(e.model == name && e.version == version));
        ev.push(LoadEvent {
            model: name.to_string(),
            version: version.to_string(),
            state,
            error,
            at_unix: unix_now(),
            stamp,
        });
        // Bounded: the newest 100 events.
        let excess = ev.len().saturating_sub(100);
        ev.drain(..excess);
    }

    fn clear_event(&self, name: &str, version: &str) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| !(e.model == name && e.version == version));
    }

    pub fn events(&self) -> Vec<LoadEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Unloaded versions whose workers are still finishing (forgets the ones that exited).
    pub fn draining(&self) -> Vec<(String, String)> {
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|x| !x.exited.load(Ordering::SeqCst));
        r.iter()
            .map(|x| (x.name.clone(), x.version.clone()))
            .collect()
    }

    /// Every loaded version: (default model, per model: (default version, versions), splits).
    pub fn snapshot(&self) -> Snapshot {
        let t = self.read();
        Snapshot {
            default_model: t.default_model.clone(),
            models: t
                .models
                .iter()
                .map(|(n, e)| (n.clone(), e.default_version.clone(), e.versions.clone()))
                .collect(),
            splits: t.splits.clone(),
        }
    }

    /// One repository scan: loads what is newer than each model's default version (and models not
    /// loaded yet), making it the default and retiring the previous one. A version that failed is
    /// tried again only once its files change.
    pub fn poll(&self) {
        let Some(repo) = &self.repository else {
            return;
        };
        for name in repo.models() {
            let Some(latest) = repo.latest(&name) else {
                continue;
            };
            let current = self
                .read()
                .models
                .get(&name)
                .map(|e| e.default_version.clone());
            if let Some(cur) = &current {
                if compare_versions(&latest, cur) != std::cmp::Ordering::Greater {
                    continue;
                }
            }
            let stamp = repo.stamp(&name, &latest);
            let failed_before = self.events().iter().any(|e| {
                e.model == name && e.version == latest && e.state == "failed" && e.stamp == stamp
            });
            if failed_before {
                continue;
            }
            tracing::info!(model = %name, version = %latest, "polling found a new version: loading it");
            let _ = self.load(&name, Some(&latest), true, current.is_some());
        }
    }

    /// Shutdown: every worker (serving or draining) finishes its queue and stops. Returns their
    /// threads to join.
    pub fn stop_all(&self) -> Vec<std::thread::JoinHandle<()>> {
        for e in self.read().models.values() {
            for s in &e.versions {
                s.queue.stop();
            }
        }
        std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

pub struct Snapshot {
    pub default_model: String,
    /// (name, default version, loaded versions oldest first)
    pub models: Vec<(String, String, Vec<Arc<Served>>)>,
    pub splits: BTreeMap<String, Split>,
}
