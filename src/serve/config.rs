//! Layered configuration: built-in defaults < TOML file (`--config`) < environment
//! (`SEQSERVE__SECTION__KEY`) < CLI flags. Unknown keys and bad values fail at start, naming the key.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerSection,
    pub model: ModelSection,
    pub batching: BatchingSection,
    pub limits: LimitsSection,
    pub logging: LoggingSection,
    pub admin: AdminSection,
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
    /// After SIGTERM/SIGINT: how long in-flight and queued requests may take before exit.
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    pub path: PathBuf,
    /// auto | cpu | cuda:N
    pub device: String,
    /// libtorch intra-op threads; 0 = auto: the container's CPU quota (cgroup, not the host's cores)
    /// minus one core for the HTTP threads, at least 1 (see device::serving_threads).
    pub intra_op_threads: usize,
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Bearer token for admin routes (POST /evaluate). Empty: admin routes are refused.
    pub token: String,
    /// Directory holdout files may be named from (no path may leave it). Empty: inline holdouts only.
    pub holdout_dir: PathBuf,
    /// Evaluations with at most this many cases answer directly; larger ones become jobs (202).
    pub max_inline_cases: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            host: "0.0.0.0".into(),
            port: 8080,
            body_limit_bytes: 1 << 20,
            request_timeout_ms: 1000,
            drain_timeout_secs: 30,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: PathBuf::from("models/beauty-2l"),
            device: "auto".into(),
            intra_op_threads: 0,
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
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            token: String::new(),
            holdout_dir: PathBuf::new(),
            max_inline_cases: 2000,
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
    let cfg: Config = b
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| format!("configuration: {e}"))?;
    cfg.validate()?;
    Ok(cfg)
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("server.body_limit_bytes", self.server.body_limit_bytes),
            (
                "server.request_timeout_ms",
                self.server.request_timeout_ms as usize,
            ),
            ("batching.max_batch_size", self.batching.max_batch_size),
            ("batching.max_queue_size", self.batching.max_queue_size),
            ("limits.max_k", self.limits.max_k),
            ("limits.max_batch_requests", self.limits.max_batch_requests),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("configuration: {key} must be positive"));
            }
        }
        if self.batching.max_delay_us > 1_000_000 {
            return Err(
                "configuration: batching.max_delay_us must be at most 1000000 (1 s)".into(),
            );
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
        let e = load(None, &[("batching.max_batch_size", "0".into())]).unwrap_err();
        assert!(e.contains("batching.max_batch_size"), "{e}");
        let e = load(None, &[("model.device", "tpu".into())]).unwrap_err();
        assert!(e.contains("model.device"), "{e}");
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
