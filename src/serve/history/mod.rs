//! Users' recent events, kept by the service so that a storefront can post events as they happen
//! (`POST /events`) and ask "recommend for user u". One interface ([`HistoryStore`]), two stores:
//! `memory` (the embedded default: bounded, least recently used users evicted) and `redis`
//! (shared by every replica). [`History`] wraps whichever is configured with the operation
//! timeout and the metrics, so handlers never wait on a store longer than history.timeout_ms.
//!
//! User ids are personal data: they are never logged or used as metric labels; Redis keys carry a
//! hash of them, not the ids.
pub mod memory;
pub mod redis;

use crate::serve::config::{HistorySection, HistoryStoreKind};
use crate::serve::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One event as stored (compact field names: it is kept for millions of users).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The item's external id.
    #[serde(rename = "i")]
    pub item: String,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<String>,
    /// Unix seconds, as the caller gave it.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// An event to append: whose, its dedup id (a repeated one is counted once), the event.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub user: String,
    pub event_id: Option<String>,
    pub event: StoredEvent,
}

/// What went wrong with a store operation (the kind is a metric label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer within history.timeout_ms.
    Timeout,
    /// The store cannot be reached (connection refused or dropped).
    Unavailable(String),
    /// The store answered something unexpected.
    Protocol(String),
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Protocol(_) => "protocol",
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("the history store did not answer in time"),
            StoreError::Unavailable(m) => write!(f, "the history store is unavailable: {m}"),
            StoreError::Protocol(m) => write!(f, "the history store failed: {m}"),
        }
    }
}

/// A store of users' most recent events.
#[async_trait::async_trait]
pub trait HistoryStore: Send + Sync {
    /// Appends `events` in order, each to its user's history, keeping the most recent
    /// history.max_events; an event whose `event_id` its user has seen is skipped. Returns how
    /// many were appended. An error means nothing is known to be written for the users affected
    /// (the memory store never fails; Redis appends one user atomically).
    async fn append(&self, events: &[NewEvent]) -> Result<usize, StoreError>;
    /// Each user's stored events, oldest first (empty for an unknown user).
    async fn read(&self, users: &[String]) -> Result<Vec<Vec<StoredEvent>>, StoreError>;
    /// Erases a user's history; whether there was one.
    async fn delete(&self, user: &str) -> Result<bool, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// (users, bytes) held, when the store keeps them itself.
    fn usage(&self) -> Option<(usize, usize)> {
        None
    }
}

/// The configured store, with timeouts and metrics.
pub struct History {
    store: Box<dyn HistoryStore>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    pub kind: HistoryStoreKind,
}

impl History {
    pub fn new(cfg: &HistorySection, metrics: Arc<Metrics>) -> Result<History, String> {
        let store: Box<dyn HistoryStore> = match cfg.store {
            HistoryStoreKind::Memory => Box::new(memory::MemoryStore::new(cfg)),
            HistoryStoreKind::Redis => Box::new(redis::RedisStore::new(cfg)?),
        };
        metrics.history_up.set(1);
        Ok(History {
            store,
            timeout: Duration::from_millis(cfg.timeout_ms),
            metrics,
            kind: cfg.store,
        })
    }

    /// Runs one store operation within the timeout, timing it and counting its failure.
    async fn run<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let t0 = Instant::now();
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout),
        };
        self.metrics
            .history_seconds
            .with_label_values(&[op])
            .observe(t0.elapsed().as_secs_f64());
        match &r {
            Ok(_) => self.metrics.history_up.set(1),
            Err(e) => {
                self.metrics
                    .history_errors
                    .with_label_values(&[op, e.kind()])
                    .inc();
                self.metrics.history_up.set(0);
            }
        }
        r
    }

    pub async fn append(&self, events: &[NewEvent]) -> Result<usize, StoreError> {
        let r = self.run("append", self.store.append(events)).await;
        self.publish_usage();
        r
    }

    pub async fn read(&self, users: &[String]) -> Result<Vec<Vec<StoredEvent>>, StoreError> {
        self.run("read", self.store.read(users)).await
    }

    pub async fn delete(&self, user: &str) -> Result<bool, StoreError> {
        let r = self.run("delete", self.store.delete(user)).await;
        self.publish_usage();
        r
    }

    /// Checks the store (called periodically, so that `seqserve_history_store_up` follows an
    /// outage and a recovery even without traffic).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", self.store.ping()).await
    }

    fn publish_usage(&self) {
        if let Some((users, bytes)) = self.store.usage() {
            self.metrics.history_users.set(users as i64);
            self.metrics.history_bytes.set(bytes as i64);
        }
    }
}
