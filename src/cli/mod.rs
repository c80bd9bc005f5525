//! Subcommands and their arguments.
mod evaluate;
mod holdout;
mod import_model;
mod index;
mod recommend;
mod serve;
mod sweep;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "seqserve",
    version,
    about = "Serve and evaluate a Transformer sequence recommender"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train an encoder on a behaviour log and write a model directory.
    Train(train::TrainArgs),
    /// Train every point of a grid of `train` options; keep the best by validation F1@K.
    Sweep(sweep::SweepArgs),
    /// Rank items for one history with a model directory (the server's code path, offline).
    Recommend(recommend::RecommendArgs),
    /// Build a labelled holdout (JSON Lines) from a log with the split `train` uses.
    Holdout(holdout::HoldoutArgs),
    /// Evaluate models on a holdout: metrics at several K with CIs, paired tests between models.
    Evaluate(evaluate::EvaluateArgs),
    /// Build and save a model's approximate-retrieval index (for `retrieval.mode = "ann"`).
    Index(index::IndexArgs),
    /// Import a model trained elsewhere in PyTorch (RecBole's SASRec, or a state dict and a mapping).
    Import(import_model::ImportArgs),
    /// Serve POST /recommend (dynamic batching), health, metrics and admin routes.
    Serve(serve::ServeArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => {
            init_logging();
            keep_freed_memory();
            train::run(a)
        }
        Command::Sweep(a) => {
            init_logging();
            keep_freed_memory();
            sweep::run(a)
        }
        Command::Recommend(a) => {
            init_logging();
            recommend::run(a)
        }
        Command::Holdout(a) => {
            init_logging();
            holdout::run(a)
        }
        Command::Evaluate(a) => {
            init_logging();
            keep_freed_memory();
            evaluate::run(a)
        }
        Command::Index(a) => {
            init_logging();
            index::run(a)
        }
        Command::Import(a) => {
            init_logging();
            import_model::run(a)
        }
        // The server sets up logging from its configuration (human or JSON).
        Command::Serve(a) => serve::run(a),
    }
}

/// For the batch commands (train, sweep, evaluate): freed memory stays in the process for the next
/// step instead of going back to the system. Every training step allocates and frees the same
/// few-megabyte tensors (a batch's 128 x 12k logits are 6 MB); glibc served those from fresh `mmap`s
/// or trimmed them off its heaps, so each step paid for page faults on zeroed pages: 17% of a
/// Beauty epoch's CPU time in `perf`, and the epoch took 1.2x as long (`scripts/bench-train.sh`).
/// Allocations up to 32 MB (glibc's largest threshold) now come from the heaps, which are trimmed
/// only past 2 GB free. The server is left with glibc's defaults (its RSS is watched).
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before the command's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEQSERVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Loads a model to rank with, its exact scan set up as the server's default (all cores and the
/// exact bf16 first pass for large catalogues): the same rankings, sooner.
pub fn load_for_ranking(
    dir: &std::path::Path,
    device: tch::Device,
) -> Result<seqserve::model::Model> {
    let mut model = seqserve::model::Model::load(dir, device)?;
    model
        .configure_scan(0, seqserve::model::retrieval::exact::ScanPrecision::Auto)
        .map_err(anyhow::Error::msg)?;
    Ok(model)
}

/// Fails early, naming the path, when an output file could not be written: its directory is
/// missing or not writable, or the path is a directory. Probed with a temporary file, so an
/// existing output is left as it is until the work is done.
pub fn check_output(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if path.is_dir() {
        anyhow::bail!("output {} is a directory", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    tempfile::NamedTempFile::new_in(dir)
        .map(drop)
        .with_context(|| format!("cannot write {} (directory not writable)", path.display()))
}

/// `--threads` for the offline commands (0 = the CPU quota), set as libtorch's intra-op threads.
/// Refused past 4 threads a CPU: more never helps, and thousands fail to spawn mid-command (a
/// panic, not an error).
pub fn configure_threads(threads: usize) -> anyhow::Result<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = 4 * cpus;
    if threads > most {
        anyhow::bail!("--threads must be at most {most} (4 a CPU, {cpus} here), got {threads}");
    }
    Ok(seqserve::device::configure_threads(threads))
}
