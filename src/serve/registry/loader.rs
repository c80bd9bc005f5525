//! Loading versions into the registry: from the repository or a directory, beside what serves
//! (load, warm up, then one write under the table's lock); polling the repository for new ones.
use super::{unix_now, ModelEntry, Registry, Served};
use crate::model::repository::compare_versions;
use crate::serve::infer::worker;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What a load did: the version, whether this call loaded it (else it was already loaded, and
/// only the default switch applied), and whether it is its model's default afterwards.
pub struct LoadOutcome {
    pub served: Arc<Served>,
    pub newly_loaded: bool,
    pub is_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// No such model or version on disk, or a bad name.
    NotFound(String),
    /// The files are there but do not make a usable model (bad files, non-finite weights...).
    Failed(String),
    /// Admin loading needs a repository.
    NoRepository,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::NotFound(m) => f.write_str(m),
            LoadError::Failed(m) => write!(f, "{m}; the versions already loaded keep serving"),
            LoadError::NoRepository => f.write_str(
                "this server serves model.path alone: set model.repository to load versions at run time",
            ),
        }
    }
}

/// The text a panic carried.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let full = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    // libtorch's messages carry a C++ backtrace: its first line says what failed.
    full.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

impl Registry {
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
        self.reap();
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
                tracing::warn!(model = name, version = %previous, error = %e, "previous version left loaded");
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
        // Loading runs libtorch, which panics on a failed allocation: a panic is a failed load
        // (reported, counted, retried only when the files change), never the process's end.
        let ranker =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.opener.open(&dir)))
                .unwrap_or_else(|p| {
                    Err(format!("the model loader failed: {}", panic_message(&*p)))
                })?;
        let retrieval = ranker.retrieval_name(s.batching.retrieval);
        let manifest = Arc::new(ranker.manifest().clone());
        let catalogue = ranker.catalogue();
        let device = ranker.device_name();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let worker::Started {
            queue,
            thread: worker,
            workers,
        } = worker::start(
            ranker,
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
            device,
            retrieval,
            threads: s.threads,
            workers,
            loaded_at_unix: unix_now(),
            load_seconds: (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        }))
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
}
