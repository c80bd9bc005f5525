use anyhow::Result;
use clap::Args;
use seqserve::data::{LogFormat, Split};
use seqserve::train::{train, TrainConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Behaviour log: sequence lines (`user item item ...`) or event CSV (`user,item,category,behaviour,timestamp`).
    #[arg(long)]
    data: PathBuf,
    /// Log format (default: .csv = events, else sequences).
    #[arg(long, value_enum)]
    format: Option<LogFormat>,
    /// MovieLens users.dat whose gender, age and occupation become context features.
    #[arg(long)]
    users: Option<PathBuf>,
    /// Skip (and count) malformed lines instead of failing on the first.
    #[arg(long)]
    skip_malformed: bool,
    /// Train on the first N users only (quick runs).
    #[arg(long)]
    limit_users: Option<usize>,
    /// leave-one-out | leave-last-N | temporal:UNIX_SECONDS (shared with `seqserve holdout`).
    #[arg(long, default_value = "leave-one-out")]
    split: Split,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing model directory at --out (without it, an existing directory is refused).
    #[arg(long)]
    force: bool,
    /// Model name (default: the output directory's name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "1")]
    model_version: String,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 2)]
    heads: usize,
    /// Feed-forward width (default 4 × d_model).
    #[arg(long)]
    ffn_dim: Option<usize>,
    #[arg(long, default_value_t = 0.3)]
    dropout: f64,
    #[arg(long, default_value_t = 50)]
    max_len: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Stop after this many epochs without a better validation F1@K.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// K of the selection metric F1@K.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// auto | cpu | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// libtorch intra-op threads (0 = the CPU quota).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let device = seqserve::device::parse_device(&a.device)?;
    let threads = seqserve::device::configure_threads(a.threads);
    let name = a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cfg = TrainConfig {
        data: a.data,
        format: a.format,
        users: a.users,
        skip_malformed: a.skip_malformed,
        limit_users: a.limit_users,
        split: a.split,
        out: a.out,
        force: a.force,
        name,
        version: a.model_version,
        d_model: a.d_model,
        n_layers: a.layers,
        n_heads: a.heads,
        ffn_dim: a.ffn_dim.unwrap_or(4 * a.d_model),
        dropout: a.dropout,
        max_len: a.max_len,
        batch_size: a.batch_size,
        learning_rate: a.lr,
        max_epochs: a.epochs,
        patience: a.patience,
        seed: a.seed,
        k: a.k,
        device,
        threads,
        command,
    };
    let out = train(&cfg)?;
    let m = &out.model.manifest;
    let t = m.training.as_ref().expect("training record");
    let metrics = m.metrics.as_ref().expect("metrics");
    println!(
        "wrote {} (best epoch {} of {}, {:.1} s/epoch, {:.0} s total)",
        out.dir.display(),
        t.best_epoch,
        t.epochs_run,
        t.seconds_per_epoch,
        t.wall_time_seconds
    );
    for key in ["hr@10", "ndcg@10", "f1@10", "hr@20", "ndcg@20"] {
        println!(
            "  test {key:<8} {:.4}   (validation {:.4})",
            metrics.test[key], metrics.validation[key]
        );
    }
    Ok(())
}
