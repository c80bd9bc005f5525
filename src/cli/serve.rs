use anyhow::Result;
use clap::Args;
use seqserve::serve::config::{self, LogFormat};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (every key: deploy/seqserve.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// Model directory (one model).
    #[arg(long, conflicts_with = "repository")]
    model: Option<PathBuf>,
    /// Model repository, <name>/<version>/ (several models and versions).
    #[arg(long)]
    repository: Option<PathBuf>,
    /// The model or split answering requests that name none.
    #[arg(long)]
    default_model: Option<String>,
    /// Scan the repository for new versions every N seconds (0 = off).
    #[arg(long)]
    poll_interval_secs: Option<u64>,
    /// auto | cpu | cuda:N
    #[arg(long)]
    device: Option<String>,
    /// libtorch intra-op threads (0 = CPU quota).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    max_batch_size: Option<usize>,
    #[arg(long)]
    max_delay_us: Option<u64>,
    #[arg(long)]
    max_queue_size: Option<usize>,
    /// Worker threads per model version (0 = fill the CPU quota with `--threads` each).
    #[arg(long)]
    workers_per_model: Option<usize>,
    /// human | json
    #[arg(long)]
    log_format: Option<String>,
    /// exact | ann (how live requests are ranked; see `seqserve index`)
    #[arg(long)]
    retrieval: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let mut o: Vec<(&str, String)> = Vec::new();
    let mut put = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            o.push((k, v));
        }
    };
    put("server.host", a.host);
    put("server.port", a.port.map(|v| v.to_string()));
    put("model.path", a.model.map(|p| p.display().to_string()));
    put(
        "model.repository",
        a.repository.map(|p| p.display().to_string()),
    );
    put("model.default", a.default_model);
    put(
        "model.poll_interval_secs",
        a.poll_interval_secs.map(|v| v.to_string()),
    );
    put("model.device", a.device);
    put("model.intra_op_threads", a.threads.map(|v| v.to_string()));
    put(
        "batching.max_batch_size",
        a.max_batch_size.map(|v| v.to_string()),
    );
    put(
        "batching.max_delay_us",
        a.max_delay_us.map(|v| v.to_string()),
    );
    put(
        "batching.max_queue_size",
        a.max_queue_size.map(|v| v.to_string()),
    );
    put(
        "batching.workers_per_model",
        a.workers_per_model.map(|v| v.to_string()),
    );
    put("logging.format", a.log_format);
    put("retrieval.mode", a.retrieval);
    let cfg = config::load(a.config.as_deref(), &o).map_err(anyhow::Error::msg)?;
    init_logging(cfg.logging.format, &cfg.logging.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("seqserve-http")
        .build()?;
    let r = rt.block_on(seqserve::serve::run(
        cfg,
        seqserve::serve::lifecycle::shutdown_signal(),
        |_| {},
    ));
    // run() has drained within the drain timeout; blocking tasks still winding down (a cancelled
    // evaluation finishing its batch) must not hold the exit, as dropping the runtime would.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    r
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEQSERVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}
