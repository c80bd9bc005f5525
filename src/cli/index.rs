//! `seqserve index`: builds the approximate-retrieval index of a model and saves it beside the
//! weights (`items.usearch`), so a server with `retrieval.mode = "ann"` maps it at start instead of
//! building it.
use anyhow::{bail, Context, Result};
use clap::Args;
use seqserve::model::retrieval::{AnnParams, INDEX_FILE};
use seqserve::model::Model;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the index (default: items.usearch in the model directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// HNSW graph degree (M).
    #[arg(long, default_value_t = AnnParams::default().connectivity)]
    connectivity: usize,
    /// Candidate list while building (efConstruction).
    #[arg(long, default_value_t = AnnParams::default().expansion_add)]
    expansion_add: usize,
    /// Threads that build (0 = the CPU quota).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Replace an existing index file.
    #[arg(long)]
    force: bool,
}

pub fn run(a: IndexArgs) -> Result<()> {
    if !(2..=256).contains(&a.connectivity) {
        bail!(
            "--connectivity must be between 2 and 256, got {}",
            a.connectivity
        );
    }
    if !(1..=100_000).contains(&a.expansion_add) {
        bail!(
            "--expansion-add must be between 1 and 100000, got {}",
            a.expansion_add
        );
    }
    let out = a.out.clone().unwrap_or_else(|| a.model.join(INDEX_FILE));
    // Checked before the (long) build, not after it.
    if out.exists() && !a.force {
        bail!(
            "{} already exists; pass --force to replace it",
            out.display()
        );
    }
    crate::cli::check_output(&out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let threads = seqserve::device::or_cpu_quota(a.threads);
    seqserve::device::configure_threads(threads);
    let model = Model::load(&a.model, tch::Device::Cpu)?;
    let params = AnnParams {
        connectivity: a.connectivity,
        expansion_add: a.expansion_add,
        ..AnnParams::default()
    };
    let t0 = Instant::now();
    let index = model
        .build_index(params, threads)
        .map_err(anyhow::Error::msg)
        .context("building the index")?;
    let built = t0.elapsed().as_secs_f64();
    // Written beside its destination and renamed, so a server never maps half an index.
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    index
        .save(&tmp)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming into {}", out.display()))?;
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} items, connectivity {}, expansion_add {}, built in {built:.1} s with {threads} threads, {:.1} MB",
        out.display(),
        index.len(),
        a.connectivity,
        a.expansion_add,
        bytes as f64 / 1e6
    );
    Ok(())
}
