//! Layered configuration: built-in defaults < TOML file (`--config`) < environment
//! (`SEQSERVE__SECTION__KEY`) < CLI flags. Unknown keys and bad values fail at start, naming the key.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Longest per-request timeout (server.request_timeout_ms has the same bound).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// Longest accepted `user` key, in characters.
pub const MAX_USER_KEY: usize = 256;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerSection,
    pub model: ModelSection,
    pub retrieval: RetrievalSection,
    pub batching: BatchingSection,
    pub limits: LimitsSection,
    pub logging: LoggingSection,
    pub admin: AdminSection,
    pub history: HistorySection,
    /// A/B splits at start, `name = "model[:version]=weight,..."` (changeable at run time through
    /// PUT /splits/{name}). A request naming `name` is routed to an arm, sticky by its `"user"`.
    pub splits: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    pub host: String,
    pub port: u16,
    /// Largest accepted request body (413 above).
    pub body_limit_bytes: usize,
    /// Default per-request deadline; a request that cannot start in time gets 504.
    pub request_timeout_ms: u64,
    /// After SIGTERM/SIGINT: the whole shutdown (announce, drain, exit) finishes within this.
    pub drain_timeout_secs: u64,
    /// After SIGTERM the listener keeps answering (readiness 503, new work 503) at least this long,
    /// so pollers and load balancers see the 503 before connections are refused.
    pub drain_announce_ms: u64,
    /// A connection must deliver a complete request head within this long after its first byte
    /// (slow-header clients are cut off).
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress is closed after this long idle (new connections
    /// included: one that never sends a byte is closed too).
    pub keep_alive_timeout_ms: u64,
    /// A request body must arrive within this long once its head was read (408 otherwise).
    pub body_read_timeout_ms: u64,
    /// A connection whose client stops reading its responses is closed after this long without
    /// progress.
    pub send_timeout_ms: u64,
    /// Most open client connections; further ones wait in the kernel's backlog. Also capped at
    /// run time by the file-descriptor limit (which seqserve raises to its hard limit at start).
    pub max_connections: usize,
    /// Threads that parse and validate large request bodies off the async runtime (0 = the CPU
    /// quota), so no request can hold the threads that answer /health/live.
    pub parse_threads: usize,
    /// Large requests waiting for a parse thread beyond this many are refused with 429.
    pub max_parse_waiting: usize,
    /// Request bodies buffered at once, all connections together: a request whose body would go
    /// beyond it is refused (503 with Retry-After) before it is read. Bounds the memory that
    /// stalled uploads can hold.
    pub max_buffered_body_bytes: usize,
    /// Largest request head (request line and headers together); larger ones are refused (431).
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// One model directory, served under its manifest's name and version (when no repository).
    pub path: PathBuf,
    /// A model repository, `<name>/<version>/` (each a model directory): every model's newest
    /// version that loads is served at start. Empty: serve `path` alone.
    pub repository: PathBuf,
    /// The model (or split) a request without `"model"` goes to. Empty: the only model, or with
    /// several, start fails asking for it.
    pub default: String,
    /// Scan the repository this often for new versions (and models): a newer version is loaded,
    /// warmed up, made the default, and the previous default is unloaded once its queue drains.
    /// 0 = no polling (load through the admin routes).
    pub poll_interval_secs: u64,
    /// auto | cpu | cuda:N
    pub device: String,
    /// libtorch intra-op threads of each model's worker; 0 = auto: the CPU quota (cgroup, not the
    /// host's cores) minus one core for the HTTP threads, shared between the models loaded at
    /// start, at least 1 each (see device::serving_threads).
    pub intra_op_threads: usize,
    /// A model version whose weights (as its manifest sizes them) exceed this is refused before
    /// anything is loaded.
    pub max_weights_bytes: u64,
}

/// Which approximate index answers `mode = "ann"`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    #[default]
    Ivf,
    Hnsw,
}

/// How live requests are ranked (evaluations are always exact).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalSection {
    /// exact: every item scored (on the model's device, only the top k leave it) | ann: an
    /// approximate index (`index_kind`) chooses which items are scored (catalogues of millions).
    pub mode: crate::model::retrieval::Retrieval,
    /// ivf: k-means lists, a query reads its `ivf_probe` best lists in full | hnsw: a graph
    /// (usearch) proposes candidates, re-scored exactly.
    pub index_kind: IndexKind,
    /// The saved index (`seqserve index`); empty = the kind's file in the model directory
    /// (`items.ivf.safetensors`, `items.usearch`). When the file is missing the index is built at
    /// start, before readiness (IVF: ~20 s at 1M items on 2 cores; HNSW: minutes).
    pub index_path: PathBuf,
    /// IVF lists when building at start; 0 = auto (8·√N).
    pub ivf_lists: usize,
    /// IVF lists read per query: higher = better recall, slower; 0 = auto (enough lists for
    /// about 8,192 items, at least 16).
    pub ivf_probe: usize,
    /// HNSW graph degree (used when building at start).
    pub connectivity: usize,
    /// Candidate list while building (used when building at start).
    pub expansion_add: usize,
    /// Candidate list while searching: higher = better recall, slower.
    pub expansion_search: usize,
    /// The index proposes at least this many items per request (re-scored exactly, best k kept).
    pub min_candidates: usize,
    /// Threads of the exact CPU scan, each over a range of the items; 0 = auto: the CPU quota for
    /// catalogues of 65,536 items or more (where the scan is most of a request), else 1.
    pub scan_threads: usize,
    /// auto | f32 | bf16: a bf16 first pass with a proven error bound, then the few items that can
    /// still win re-scored in f32 (the answer is the f32 scan's). auto = bf16 for catalogues of
    /// 65,536 items or more on CPUs with native bf16 (AVX-512 BF16 or AMX).
    pub scan_precision: crate::model::retrieval::exact::ScanPrecision,
}

impl Default for RetrievalSection {
    fn default() -> Self {
        let p = crate::model::retrieval::AnnParams::default();
        RetrievalSection {
            mode: Default::default(),
            index_kind: Default::default(),
            index_path: PathBuf::new(),
            ivf_lists: 0,
            ivf_probe: 0,
            connectivity: p.connectivity,
            expansion_add: p.expansion_add,
            expansion_search: p.expansion_search,
            min_candidates: p.min_candidates,
            scan_threads: 0,
            scan_precision: Default::default(),
        }
    }
}

impl RetrievalSection {
    pub fn params(&self) -> crate::model::retrieval::AnnParams {
        crate::model::retrieval::AnnParams {
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            min_candidates: self.min_candidates,
        }
    }

    /// IVF build and read settings; `threads` = the scan's threads.
    pub fn ivf_params(&self, threads: usize) -> crate::model::retrieval::IvfParams {
        crate::model::retrieval::IvfParams {
            lists: self.ivf_lists,
            probe: self.ivf_probe,
            threads,
        }
    }

    /// The index file for a model directory.
    pub fn index_file(&self, model_dir: &Path) -> PathBuf {
        if self.index_path.as_os_str().is_empty() {
            model_dir.join(match self.index_kind {
                IndexKind::Ivf => crate::model::retrieval::IVF_FILE,
                IndexKind::Hnsw => crate::model::retrieval::INDEX_FILE,
            })
        } else {
            self.index_path.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingSection {
    /// A batch closes when it holds this many requests...
    pub max_batch_size: usize,
    /// ...or when its first request has waited this long (Triton's max_queue_delay).
    pub max_delay_us: u64,
    /// Requests waiting beyond this are refused at once with 429.
    pub max_queue_size: usize,
    /// Evaluation batches run when no live request waits, or after waiting this long (so evaluations
    /// progress on a busy server, one small batch per interval).
    pub background_max_wait_ms: u64,
    /// Model worker threads per loaded version, sharing its queue and its weights: while one runs a
    /// batch, the next collects the following one and runs beside it. Each has
    /// `model.intra_op_threads` libtorch threads. 0 = auto: as many as fill the CPU quota with
    /// that many threads each, shared between the models loaded at start (2 on 2 cores, 1 where
    /// one worker's threads take all but one core). A version whose retrieval cannot rank on
    /// several threads at once (HNSW) gets 1.
    pub workers_per_model: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    pub max_k: usize,
    pub max_history: usize,
    pub max_candidates: usize,
    pub max_exclude: usize,
    /// Most requests in one POST /recommend/batch.
    pub max_batch_requests: usize,
}

/// Which history store keeps users' recent events.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStoreKind {
    /// In this process (lost at restart; not shared between replicas).
    #[default]
    Memory,
    /// A Redis server (or managed Redis, or Redis Cluster) shared by every replica.
    Redis,
}

/// Users' event histories kept by the service (`POST /events`; `/recommend` with `"user"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySection {
    /// memory | redis
    pub store: HistoryStoreKind,
    /// redis://[user:password@]host:port[/db] or rediss:// (TLS); used with store = "redis".
    pub url: String,
    /// Most recent events kept per user (older ones are dropped as new ones arrive).
    pub max_events: usize,
    /// Memory store: at most this many users (the least recently used is evicted).
    pub max_users: usize,
    /// A user's history is forgotten this long after its last event (0 = kept until evicted).
    pub ttl_secs: u64,
    /// Every store operation gives up after this long (the request is then served from its own
    /// history, or refused with 503 when it has none).
    pub timeout_ms: u64,
    /// Prefix of every Redis key (keys carry a hash tag, so one user's keys share a Cluster slot).
    pub key_prefix: String,
    /// Most events in one POST /events.
    pub max_events_per_request: usize,
}

impl Default for HistorySection {
    fn default() -> Self {
        HistorySection {
            store: HistoryStoreKind::Memory,
            url: String::new(),
            max_events: 200,
            max_users: 1_000_000,
            ttl_secs: 0,
            timeout_ms: 50,
            key_prefix: "seqserve:".into(),
            max_events_per_request: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSection {
    pub format: LogFormat,
    /// tracing filter, e.g. "info" or "seqserve=debug,info".
    pub level: String,
    /// At most this many refused-request lines (4xx, 429, 503, 504) are logged per second; the rest
    /// are counted and summarised in one line (every refusal is in /metrics anyway).
    pub max_refusal_logs_per_sec: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Bearer token for admin routes (POST /evaluate). Empty: admin routes are refused.
    pub token: String,
    /// Read the token from this file instead (a mounted Kubernetes Secret); surrounding whitespace
    /// is ignored. Empty: none.
    pub token_file: PathBuf,
    /// Directory holdout files may be named from (no path may leave it). Empty: inline holdouts only.
    pub holdout_dir: PathBuf,
    /// Evaluations with at most this many cases answer directly; larger ones become jobs (202).
    pub max_inline_cases: usize,
    /// A separate listener (on server.host) for the admin routes (/evaluate) and /metrics; when
    /// set, they are served only there. 0 = they share the public port.
    pub port: u16,
    /// Evaluations running at once (inline and jobs); more are refused with 429.
    pub max_running_evaluations: usize,
    /// Finished evaluation jobs are forgotten after this long...
    pub evaluation_ttl_secs: u64,
    /// ...or when more than this many finished ones are kept (oldest first).
    pub max_finished_evaluations: usize,
    /// Largest holdout file an evaluation may read (it is streamed, never read whole).
    pub max_holdout_bytes: u64,
    /// Most cases in one evaluation (file or inline).
    pub max_evaluation_cases: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            host: "0.0.0.0".into(),
            port: 8080,
            body_limit_bytes: 1 << 20,
            request_timeout_ms: 1000,
            drain_timeout_secs: 30,
            drain_announce_ms: 1000,
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            send_timeout_ms: 10_000,
            max_connections: 4096,
            parse_threads: 0,
            max_parse_waiting: 256,
            max_buffered_body_bytes: 256 << 20,
            max_header_bytes: 16 << 10,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: PathBuf::from("models/beauty-2l"),
            repository: PathBuf::new(),
            default: String::new(),
            poll_interval_secs: 0,
            device: "auto".into(),
            intra_op_threads: 0,
            max_weights_bytes: 16 << 30,
        }
    }
}

impl Default for BatchingSection {
    fn default() -> Self {
        BatchingSection {
            max_batch_size: 32,
            max_delay_us: 500,
            max_queue_size: 1024,
            background_max_wait_ms: 50,
            workers_per_model: 0,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_k: 100,
            max_history: 10_000,
            max_candidates: 10_000,
            max_exclude: 10_000,
            max_batch_requests: 64,
        }
    }
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            format: LogFormat::Human,
            level: "info".into(),
            max_refusal_logs_per_sec: 10,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            token: String::new(),
            token_file: PathBuf::new(),
            holdout_dir: PathBuf::new(),
            max_inline_cases: 2000,
            port: 0,
            max_running_evaluations: 2,
            evaluation_ttl_secs: 3600,
            max_finished_evaluations: 100,
            max_holdout_bytes: 256 << 20,
            max_evaluation_cases: 1_000_000,
        }
    }
}

/// Builds the configuration from its layers. `overrides` are `("section.key", value)` pairs from CLI
/// flags, applied last.
pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config, String> {
    let defaults = config::Config::try_from(&Config::default()).map_err(|e| e.to_string())?;
    let mut b = config::Config::builder().add_source(defaults);
    if let Some(f) = file {
        if !f.is_file() {
            return Err(format!("config file {} not found", f.display()));
        }
        b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
    }
    b = b.add_source(
        config::Environment::with_prefix("SEQSERVE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    for (k, v) in overrides {
        b = b.set_override(*k, v.clone()).map_err(|e| e.to_string())?;
    }
    let layers = b.build().map_err(|e| format!("configuration: {e}"))?;
    let mut cfg: Config = layers
        .clone()
        .try_deserialize()
        .map_err(|e| format!("configuration: {}", with_choices(&layers, e)))?;
    let f = &cfg.admin.token_file;
    if !f.as_os_str().is_empty() {
        if !cfg.admin.token.is_empty() {
            return Err("configuration: set admin.token or admin.token_file, not both".into());
        }
        let t = std::fs::read_to_string(f).map_err(|e| {
            format!(
                "configuration: admin.token_file {}: cannot read: {e}",
                f.display()
            )
        })?;
        cfg.admin.token = t.trim().to_string();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The config crate names a bad enum value and its key ("enum LogFormat does not have variant
/// constructor xml for key `logging.format`") but not the values the key takes; serde's own error
/// for the same value says them ("unknown variant `xml`, expected `human` or `json`"). The value is
/// read back from the layers by the error's key, so nothing here depends on the wording of the
/// crate's message; any other error is passed on as it is.
fn with_choices(layers: &config::Config, e: config::ConfigError) -> String {
    fn serde_says<T: serde::de::DeserializeOwned>(value: &str) -> Option<String> {
        serde_json::from_value::<T>(serde_json::Value::String(value.into()))
            .err()
            .map(|e| e.to_string())
    }
    let config::ConfigError::At { key: Some(key), .. } = &e else {
        return e.to_string();
    };
    let Ok(value) = layers.get_string(key) else {
        return e.to_string();
    };
    let said = match key.as_str() {
        "retrieval.mode" => serde_says::<crate::model::retrieval::Retrieval>(&value),
        "retrieval.index_kind" => serde_says::<IndexKind>(&value),
        "retrieval.scan_precision" => {
            serde_says::<crate::model::retrieval::exact::ScanPrecision>(&value)
        }
        "history.store" => serde_says::<HistoryStoreKind>(&value),
        "logging.format" => serde_says::<LogFormat>(&value),
        _ => None,
    };
    match said {
        Some(s) => format!("{key}: {s}"),
        None => e.to_string(),
    }
}

impl Config {
    /// Every numeric key has a range, checked at start: an absurd value (a queue of 10^12 slots, a
    /// million libtorch threads) must fail with the key's name, not abort or exhaust the host later.
    pub fn validate(&self) -> Result<(), String> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as u64;
        let (s, b, l, a) = (&self.server, &self.batching, &self.limits, &self.admin);
        let h = &self.history;
        let ranges: [(&str, u64, u64, u64); 48] = [
            ("history.max_events", h.max_events as u64, 1, 100_000),
            ("history.max_users", h.max_users as u64, 1, 1_000_000_000),
            ("history.ttl_secs", h.ttl_secs, 0, 10 * 365 * 86_400),
            ("history.timeout_ms", h.timeout_ms, 1, 60_000),
            (
                "history.max_events_per_request",
                h.max_events_per_request as u64,
                1,
                1_000_000,
            ),
            (
                "server.max_buffered_body_bytes",
                s.max_buffered_body_bytes as u64,
                1 << 20,
                64 << 30,
            ),
            // hyper reads a request head into one buffer of at least 8 KiB.
            (
                "server.max_header_bytes",
                s.max_header_bytes as u64,
                8 << 10,
                1 << 20,
            ),
            (
                "model.max_weights_bytes",
                self.model.max_weights_bytes,
                1 << 20,
                4 << 40,
            ),
            (
                "model.poll_interval_secs",
                self.model.poll_interval_secs,
                0,
                86_400,
            ),
            (
                "server.body_limit_bytes",
                s.body_limit_bytes as u64,
                1,
                64 << 20,
            ),
            (
                "server.request_timeout_ms",
                s.request_timeout_ms,
                1,
                MAX_TIMEOUT_MS,
            ),
            ("server.drain_timeout_secs", s.drain_timeout_secs, 1, 3600),
            ("server.drain_announce_ms", s.drain_announce_ms, 0, 60_000),
            (
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms,
                100,
                600_000,
            ),
            (
                "server.keep_alive_timeout_ms",
                s.keep_alive_timeout_ms,
                100,
                3_600_000,
            ),
            (
                "server.body_read_timeout_ms",
                s.body_read_timeout_ms,
                100,
                600_000,
            ),
            ("server.send_timeout_ms", s.send_timeout_ms, 100, 600_000),
            (
                "server.max_connections",
                s.max_connections as u64,
                1,
                1_000_000,
            ),
            (
                "server.parse_threads",
                s.parse_threads as u64,
                0,
                cores.max(1) * 4,
            ),
            (
                "server.max_parse_waiting",
                s.max_parse_waiting as u64,
                0,
                100_000,
            ),
            (
                "model.intra_op_threads",
                self.model.intra_op_threads as u64,
                0,
                cores,
            ),
            (
                "retrieval.connectivity",
                self.retrieval.connectivity as u64,
                2,
                256,
            ),
            (
                "retrieval.expansion_add",
                self.retrieval.expansion_add as u64,
                1,
                100_000,
            ),
            (
                "retrieval.expansion_search",
                self.retrieval.expansion_search as u64,
                1,
                100_000,
            ),
            (
                "retrieval.min_candidates",
                self.retrieval.min_candidates as u64,
                1,
                100_000,
            ),
            (
                "retrieval.scan_threads",
                self.retrieval.scan_threads as u64,
                0,
                cores,
            ),
            (
                "retrieval.ivf_lists",
                self.retrieval.ivf_lists as u64,
                0,
                10_000_000,
            ),
            (
                "retrieval.ivf_probe",
                self.retrieval.ivf_probe as u64,
                0,
                10_000_000,
            ),
            ("batching.max_batch_size", b.max_batch_size as u64, 1, 4096),
            (
                "batching.workers_per_model",
                b.workers_per_model as u64,
                0,
                64,
            ),
            ("batching.max_delay_us", b.max_delay_us, 0, 1_000_000),
            (
                "batching.max_queue_size",
                b.max_queue_size as u64,
                1,
                100_000,
            ),
            (
                "batching.background_max_wait_ms",
                b.background_max_wait_ms,
                1,
                60_000,
            ),
            ("limits.max_k", l.max_k as u64, 1, 10_000),
            ("limits.max_history", l.max_history as u64, 1, 1_000_000),
            (
                "limits.max_candidates",
                l.max_candidates as u64,
                1,
                1_000_000,
            ),
            ("limits.max_exclude", l.max_exclude as u64, 0, 1_000_000),
            (
                "limits.max_batch_requests",
                l.max_batch_requests as u64,
                1,
                4096,
            ),
            (
                "logging.max_refusal_logs_per_sec",
                self.logging.max_refusal_logs_per_sec as u64,
                0,
                100_000,
            ),
            (
                "admin.max_inline_cases",
                a.max_inline_cases as u64,
                1,
                1_000_000,
            ),
            ("admin.port", a.port as u64, 0, 65_535),
            (
                "admin.max_running_evaluations",
                a.max_running_evaluations as u64,
                1,
                64,
            ),
            (
                "admin.evaluation_ttl_secs",
                a.evaluation_ttl_secs,
                1,
                30 * 86_400,
            ),
            (
                "admin.max_finished_evaluations",
                a.max_finished_evaluations as u64,
                1,
                10_000,
            ),
            ("admin.max_holdout_bytes", a.max_holdout_bytes, 1, 64 << 30),
            (
                "admin.max_evaluation_cases",
                a.max_evaluation_cases as u64,
                1,
                100_000_000,
            ),
            ("server.port", s.port as u64, 0, 65_535),
            (
                "server.drain_announce_ms (in ms, at most the drain timeout)",
                s.drain_announce_ms,
                0,
                s.drain_timeout_secs.saturating_mul(1000),
            ),
        ];
        for (key, v, lo, hi) in ranges {
            if v < lo || v > hi {
                return Err(format!(
                    "configuration: {key} must be between {lo} and {hi}, got {v}"
                ));
            }
        }
        if self.history.store == HistoryStoreKind::Redis && self.history.url.is_empty() {
            return Err(
                "configuration: history.store = \"redis\" needs history.url (redis://host:port)"
                    .into(),
            );
        }
        if a.port != 0 && a.port == s.port {
            return Err(format!(
                "configuration: admin.port must differ from server.port ({})",
                s.port
            ));
        }
        for (name, spec) in &self.splits {
            crate::model::repository::check_name("split", name)
                .and_then(|_| crate::serve::registry::ab_split::AbSplit::parse(spec).map(|_| ()))
                .map_err(|e| format!("configuration: splits.{name}: {e}"))?;
        }
        if !self.model.default.is_empty() {
            crate::model::repository::check_name("model.default", &self.model.default)
                .map_err(|e| format!("configuration: {e}"))?;
        }
        if let Err(e) = crate::device::parse_device(&self.model.device) {
            return Err(format!("configuration: model.device: {e}"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(format!(
                "configuration: logging.level {:?} is not a valid filter",
                self.logging.level
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[server]\nport = 9000\n[batching]\nmax_batch_size = 8\n",
        )
        .unwrap();
        let c = load(Some(&f), &[("batching.max_batch_size", "16".into())]).unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.batching.max_batch_size, 16);
        assert_eq!(c.limits.max_k, 100);

        std::fs::write(&f, "[server]\nport = \"high\"\n").unwrap();
        let e = load(Some(&f), &[]).unwrap_err();
        assert!(e.contains("server.port"), "{e}");
        std::fs::write(&f, "[server]\nprot = 1\n").unwrap();
        let e = load(Some(&f), &[]).unwrap_err();
        assert!(e.contains("prot"), "{e}");
        let e = load(None, &[("retrieval.scan_precision", "bf17".into())]).unwrap_err();
        assert!(
            e.contains("bf17") && e.contains("retrieval.scan_precision"),
            "{e}"
        );
        // The values it takes are said, for every enum-valued key.
        assert!(e.contains("expected"), "{e}");
        for key in [
            "retrieval.mode",
            "retrieval.index_kind",
            "history.store",
            "logging.format",
        ] {
            let e = load(None, &[(key, "nonsense".into())]).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "configuration: {key}: unknown variant `nonsense`, expected"
                )),
                "{e}"
            );
        }
        // From a file as from a flag.
        std::fs::write(&f, "[logging]\nformat = \"xml\"\n").unwrap();
        let e = load(Some(&f), &[]).unwrap_err();
        assert!(
            e.starts_with("configuration: logging.format: unknown variant `xml`, expected"),
            "{e}"
        );
        let c = load(None, &[("retrieval.scan_precision", "bf16".into())]).unwrap();
        assert_eq!(
            c.retrieval.scan_precision,
            crate::model::retrieval::exact::ScanPrecision::Bf16
        );
        let e = load(None, &[("batching.max_batch_size", "0".into())]).unwrap_err();
        assert!(e.contains("batching.max_batch_size"), "{e}");
        let e = load(None, &[("model.device", "tpu".into())]).unwrap_err();
        assert!(e.contains("model.device"), "{e}");
    }

    #[test]
    fn every_numeric_key_has_an_upper_bound_checked_at_start() {
        // Each of these aborted, panicked or exhausted the host before the ranges existed.
        for (key, value) in [
            ("batching.max_queue_size", "1000000000000"),
            ("batching.max_queue_size", "9223372036854775807"),
            ("model.intra_op_threads", "1000000"),
            ("batching.max_batch_size", "100000000"),
            ("server.body_limit_bytes", "1000000000000"),
            ("limits.max_k", "1000000000"),
            ("admin.max_running_evaluations", "0"),
            ("server.header_read_timeout_ms", "0"),
        ] {
            let e = load(None, &[(key, value.into())]).unwrap_err();
            assert!(
                e.contains(key) && e.contains("between"),
                "{key}={value}: {e}"
            );
        }
        let e = load(
            None,
            &[
                ("admin.port", "8080".into()),
                ("server.port", "8080".into()),
            ],
        )
        .unwrap_err();
        assert!(e.contains("admin.port"), "{e}");
    }

    #[test]
    fn the_token_can_come_from_a_file_and_the_k8s_configmap_loads() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "  abc123\n").unwrap();
        let c = load(None, &[("admin.token_file", tok.display().to_string())]).unwrap();
        assert_eq!(c.admin.token, "abc123");
        let e = load(
            None,
            &[
                ("admin.token_file", tok.display().to_string()),
                ("admin.token", "x".into()),
            ],
        )
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = load(None, &[("admin.token_file", "/nonexistent/t".into())]).unwrap_err();
        assert!(
            e.contains("admin.token_file") && e.contains("/nonexistent/t"),
            "{e}"
        );
        // k8s/configmap.yaml embeds a TOML: it must load as this build reads it.
        let yaml =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/configmap.yaml"))
                .unwrap();
        let toml: String = yaml
            .split("seqserve.toml: |\n")
            .nth(1)
            .unwrap()
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let f = dir.path().join("k8s.toml");
        std::fs::write(
            &f,
            toml.replace("/etc/seqserve-admin/token", &tok.display().to_string()),
        )
        .unwrap();
        let c = load(Some(&f), &[]).unwrap();
        assert_eq!((c.admin.port, c.admin.token.as_str()), (9090, "abc123"));
        assert_eq!(c.logging.format, LogFormat::Json);
    }

    #[test]
    fn example_file_lists_every_key_and_parses() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/seqserve.toml");
        let c = load(Some(Path::new(example)), &[]).unwrap();
        assert_eq!(
            c,
            Config::default(),
            "deploy/seqserve.toml should document the defaults"
        );
        let text = std::fs::read_to_string(example).unwrap();
        let v = serde_json::to_value(Config::default()).unwrap();
        for (section, keys) in v.as_object().unwrap() {
            assert!(
                text.contains(&format!("[{section}]")),
                "missing [{section}]"
            );
            for key in keys.as_object().unwrap().keys() {
                assert!(
                    text.contains(&format!("\n{key} =")),
                    "missing {section}.{key}"
                );
            }
        }
    }
}
