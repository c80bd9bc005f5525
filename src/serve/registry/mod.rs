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
pub mod ab_split;
pub mod loader;
pub mod opener;

use crate::error::excerpt;
use crate::model::repository::Repository;
use crate::model::{Catalogue, Manifest};
use crate::serve::infer::queue::QueueHandle;
use crate::serve::telemetry::Metrics;
use ab_split::AbSplit;
use opener::{LoadSettings, Opener};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

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
    /// Intra-op threads of each worker thread.
    pub threads: usize,
    /// Worker threads ranking for this version.
    pub workers: usize,
    pub loaded_at_unix: u64,
    pub load_seconds: f64,
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
    splits: BTreeMap<String, AbSplit>,
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
    /// Turns a version directory into a ranker (the model; a fake in unit tests).
    opener: Box<dyn Opener>,
    metrics: Arc<Metrics>,
    events: Mutex<Vec<LoadEvent>>,
    retired: Mutex<Vec<Retired>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// One load at a time: two models loading at once would double peak memory and halve the
    /// cores left to live traffic.
    load_lock: Mutex<()>,
}

/// Where a request was routed.
#[derive(Clone)]
pub struct Route {
    pub served: Arc<Served>,
    /// The split that chose the arm, when one did.
    pub split: Option<String>,
}

/// Why the registry refused a routing or a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// No such model, version or split is loaded.
    NotFound(String),
    /// A change that traffic still depends on (a default version, a split's arm).
    Conflict(String),
    /// A malformed change (a split of the wrong shape).
    Invalid(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::NotFound(m) | RegistryError::Conflict(m) | RegistryError::Invalid(m) => {
                f.write_str(m)
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn conflict(msg: impl Into<String>) -> RegistryError {
    RegistryError::Conflict(msg.into())
}

fn not_found(msg: impl Into<String>) -> RegistryError {
    RegistryError::NotFound(msg.into())
}

impl Registry {
    pub fn new(
        repository: Option<Repository>,
        settings: LoadSettings,
        opener: Box<dyn Opener>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            table: RwLock::new(Table::default()),
            repository,
            settings,
            opener,
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
    ) -> Result<Route, RegistryError> {
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
                "no model {} is loaded (GET /models lists them: {})",
                excerpt(name),
                t.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let v = version.unwrap_or(&entry.default_version);
        let served = entry.get(v).cloned().ok_or_else(|| {
            not_found(format!(
                "model {} has no loaded version {} (loaded: {})",
                excerpt(name),
                excerpt(v),
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
    pub fn exact(&self, model: &str, version: Option<&str>) -> Result<Arc<Served>, RegistryError> {
        let t = self.read();
        if version.is_none() && !t.models.contains_key(model) && t.splits.contains_key(model) {
            // Not found: no model has this name (a split does, and this asks for a model).
            return Err(not_found(format!(
                "{} is an A/B split, not a model: name a model (and version)",
                excerpt(model)
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
    pub fn set_default_model(&self, name: &str) -> Result<(), RegistryError> {
        let mut t = self.write();
        if !t.models.contains_key(name) && !t.splits.contains_key(name) {
            return Err(not_found(format!(
                "no model or split {} is loaded",
                excerpt(name)
            )));
        }
        t.default_model = name.to_string();
        Ok(())
    }

    /// Makes a loaded version its model's default (atomically: the next request routes to it).
    pub fn set_default_version(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let mut t = self.write();
        let entry = t
            .models
            .get_mut(name)
            .ok_or_else(|| not_found(format!("no model {} is loaded", excerpt(name))))?;
        if entry.get(version).is_none() {
            return Err(not_found(format!(
                "model {} has no loaded version {}; load it first",
                excerpt(name),
                excerpt(version)
            )));
        }
        entry.default_version = version.to_string();
        drop(t);
        self.publish_info();
        Ok(())
    }

    /// Arms must name loaded models (404 otherwise, checked first: a missing model is the
    /// answer to give even when the split has other faults), then have a valid shape (422).
    pub fn set_split(&self, name: &str, split: AbSplit) -> Result<(), RegistryError> {
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
        split.check().map_err(RegistryError::Invalid)?;
        t.splits.insert(name.to_string(), split);
        Ok(())
    }

    pub fn remove_split(&self, name: &str) -> Result<(), RegistryError> {
        let mut t = self.write();
        if t.default_model == name && !t.models.contains_key(name) {
            return Err(conflict(format!(
                "{name:?} is the default model: set another default first (PUT /default)"
            )));
        }
        t.splits
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(format!("no split {}", excerpt(name))))
    }

    /// Takes a version out of service. Refused (409) for a version traffic still needs: the
    /// model's default while other versions are loaded, the last version of the default model,
    /// or an arm of a split.
    pub fn unload(&self, name: &str, version: &str) -> Result<(), RegistryError> {
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
            .ok_or_else(|| not_found(format!("no model {} is loaded", excerpt(name))))?;
        let pos = entry
            .versions
            .iter()
            .position(|s| s.version == version)
            .ok_or_else(|| {
                not_found(format!(
                    "model {} has no loaded version {}",
                    excerpt(name),
                    excerpt(version)
                ))
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
        self.reap();
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| !x.exited.load(Ordering::SeqCst));
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

    /// Joins the threads of workers that have exited. A finished thread that is never joined
    /// keeps its stack mapped (2 MiB and a guard page each): every load and unload once leaked
    /// that much, until shutdown.
    fn reap(&self) {
        let finished: Vec<std::thread::JoinHandle<()>> = {
            let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *w)
                .into_iter()
                .partition(|h| h.is_finished());
            *w = running;
            done
        };
        for h in finished {
            let _ = h.join();
        }
    }

    /// Unloaded versions whose workers are still finishing (forgets the ones that exited).
    pub fn draining(&self) -> Vec<(String, String)> {
        self.reap();
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
    pub splits: BTreeMap<String, AbSplit>,
}

#[cfg(test)]
mod tests {
    use super::loader::LoadError;
    use super::opener::Opener;
    use super::*;
    use crate::serve::infer::queue::tests::config;
    use crate::serve::infer::ranker::Ranker;
    use crate::serve::infer::worker::tests::Fake;
    use crate::serve::infer::{Infer, Request};
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// Opens a fake ranker taking `delay` per batch; directories named `bad` fail to open.
    struct FakeOpener(Duration);

    impl Opener for FakeOpener {
        fn open(&self, dir: &Path) -> Result<Box<dyn Ranker>, String> {
            if dir.ends_with("bad") {
                return Err("not a model".into());
            }
            if dir.ends_with("panics") {
                panic!("can't allocate 256000000000000 bytes");
            }
            Ok(Box::new(Fake::new(self.0)))
        }
    }

    fn registry(delay_ms: u64) -> Arc<Registry> {
        let metrics = Arc::new(Metrics::new());
        let settings = LoadSettings {
            threads: 1,
            batching: config(4, 1, 256),
        };
        Arc::new(Registry::new(
            None,
            settings,
            Box::new(FakeOpener(Duration::from_millis(delay_ms))),
            metrics,
        ))
    }

    fn work(served: &Served, id: i64) -> Request {
        crate::serve::infer::tests::request(&served.queue, id, Duration::from_secs(10))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_swap_and_an_unload_under_load_answer_every_request() {
        let reg = registry(2);
        reg.load_dir("m", "1", "v1".into(), true, false).unwrap();
        reg.set_default_model("m").unwrap();
        let infer = Arc::new(Infer::new(Arc::new(Metrics::new())));
        // 8 clients, each routing and ranking 40 requests in a row, while the version swaps.
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (reg, infer) = (reg.clone(), infer.clone());
                tokio::spawn(async move {
                    let mut versions = Vec::new();
                    for i in 0..40 {
                        let route = reg.route(None, None, None).unwrap();
                        let out = infer.run(vec![work(&route.served, c * 100 + i)]).await;
                        assert_eq!(out.unwrap()[0].ranked[0].0 as i64, c * 100 + i);
                        versions.push(route.served.version.clone());
                    }
                    versions
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reg2 = reg.clone();
        let old_exited = reg.exact("m", Some("1")).unwrap().queue.exited();
        let outcome =
            tokio::task::spawn_blocking(move || reg2.load_dir("m", "2", "v2".into(), true, true))
                .await
                .unwrap()
                .unwrap();
        assert!(outcome.newly_loaded && outcome.is_default);
        let mut seen = std::collections::BTreeSet::new();
        for c in clients {
            seen.extend(c.await.unwrap());
        }
        assert!(
            seen.contains("2"),
            "traffic moved to the new version: {seen:?}"
        );
        // The retired version left routing at once and its worker exits once drained.
        assert!(reg.exact("m", Some("1")).is_err());
        let t = Instant::now();
        while !old_exited.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            old_exited.load(Ordering::SeqCst),
            "the retired worker stopped"
        );
        assert!(reg.draining().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unloaded_version_finishes_what_was_queued_on_it() {
        let reg = registry(30);
        reg.load_dir("m", "1", "v1".into(), true, false).unwrap();
        reg.load_dir("m", "2", "v2".into(), false, false).unwrap();
        reg.set_default_model("m").unwrap();
        let v2 = reg.exact("m", Some("2")).unwrap();
        let infer = Infer::new(Arc::new(Metrics::new()));
        let queued = infer.run((0..12).map(|i| work(&v2, i)).collect());
        let unload = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            reg.unload("m", "2")
        };
        let (answers, unloaded) = tokio::join!(queued, unload);
        unloaded.unwrap();
        assert_eq!(answers.unwrap().len(), 12, "every queued request answered");
        assert_eq!(
            reg.route(Some("m"), Some("2"), None)
                .err()
                .map(|e| matches!(e, RegistryError::NotFound(_))),
            Some(true)
        );
        let exited = v2.queue.exited();
        drop(v2);
        let t = Instant::now();
        while !exited.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(exited.load(Ordering::SeqCst));
    }

    #[test]
    fn routing_and_unloading_follow_the_rules() {
        let reg = registry(0);
        reg.load_dir("a", "1", "a1".into(), true, false).unwrap();
        reg.load_dir("a", "2", "a2".into(), false, false).unwrap();
        reg.load_dir("b", "1", "b1".into(), true, false).unwrap();
        reg.set_default_model("a").unwrap();
        assert_eq!(reg.route(None, None, None).unwrap().served.version, "1");
        assert_eq!(
            reg.route(Some("a"), Some("2"), None)
                .unwrap()
                .served
                .version,
            "2"
        );
        assert!(matches!(
            reg.route(Some("c"), None, None),
            Err(RegistryError::NotFound(_))
        ));
        // A split routes by user; naming a version bypasses it.
        let split = AbSplit::parse("a:2=1,b=1").unwrap();
        reg.set_split("ab", split).unwrap();
        let picked: std::collections::BTreeSet<String> = (0..200)
            .map(|u| {
                reg.route(Some("ab"), None, Some(&u.to_string()))
                    .unwrap()
                    .served
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(picked.len(), 2);
        assert!(matches!(
            reg.exact("ab", None),
            Err(RegistryError::NotFound(_))
        ));
        // A split's arm, the default version while others are loaded, the default model's last
        // version: all refused.
        assert!(matches!(
            reg.unload("a", "2"),
            Err(RegistryError::Conflict(_))
        ));
        reg.remove_split("ab").unwrap();
        assert!(matches!(
            reg.unload("a", "1"),
            Err(RegistryError::Conflict(_))
        ));
        reg.unload("a", "2").unwrap();
        assert!(matches!(
            reg.unload("a", "1"),
            Err(RegistryError::Conflict(_))
        ));
        reg.unload("b", "1").unwrap();
        // A version that fails to open changes nothing and is reported.
        let e = reg
            .load_dir("a", "3", "bad".into(), true, false)
            .err()
            .unwrap();
        assert!(matches!(e, LoadError::Failed(_)));
        assert_eq!(reg.route(None, None, None).unwrap().served.version, "1");
        assert!(reg
            .events()
            .iter()
            .any(|e| e.version == "3" && e.state == "failed"));
    }
}
