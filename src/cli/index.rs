//! `seqserve index`: builds the approximate-retrieval index of a model and saves it beside the
//! weights (`items.ivf.safetensors`, or `items.usearch` with `--kind hnsw`), so a server with
//! `retrieval.mode = "ann"` opens it at start instead of building it.
use anyhow::{bail, Context, Result};
use clap::Args;
use seqserve::model::retrieval::{AnnParams, IvfParams, INDEX_FILE, IVF_FILE};
use seqserve::model::Model;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the index (default: items.ivf.safetensors, or items.usearch for hnsw, in the
    /// model directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// ivf: k-means lists (retrieval.index_kind = "ivf", the default) | hnsw: a usearch graph.
    #[arg(long, value_enum, default_value_t = Kind::Ivf)]
    kind: Kind,
    /// IVF lists (0 = auto: 8 x sqrt(items)).
    #[arg(long, default_value_t = 0)]
    lists: usize,
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ivf,
    Hnsw,
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
    let default_file = match a.kind {
        Kind::Ivf => IVF_FILE,
        Kind::Hnsw => INDEX_FILE,
    };
    let out = a.out.clone().unwrap_or_else(|| a.model.join(default_file));
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
    let threads = super::configure_threads(a.threads)?;
    let model = Model::load(&a.model, tch::Device::Cpu)?;
    // Written beside its destination and renamed, so a server never opens half an index.
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let t0 = Instant::now();
    let what = build_and_save(&a, &model, threads, &tmp).inspect_err(|_| {
        // A failed write (a full disk) leaves no half-written file behind.
        let _ = std::fs::remove_file(&tmp);
    })?;
    let built = t0.elapsed().as_secs_f64();
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming into {}", out.display()))?;
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {what}, built in {built:.1} s with {threads} threads, {:.1} MB",
        out.display(),
        bytes as f64 / 1e6
    );
    Ok(())
}

/// Builds the index `a` asks for and writes it to `tmp`; says what it built.
fn build_and_save(
    a: &IndexArgs,
    model: &Model,
    threads: usize,
    tmp: &std::path::Path,
) -> Result<String> {
    Ok(match a.kind {
        Kind::Ivf => {
            let n = model.catalogue.len();
            if a.lists > n {
                bail!("--lists {} is more than the model's {n} items", a.lists);
            }
            let params = IvfParams {
                lists: a.lists,
                ..IvfParams::default()
            };
            let index = model
                .build_ivf(params, threads)
                .map_err(anyhow::Error::msg)
                .context("building the index")?;
            model
                .save_ivf(&index, tmp)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("writing {}", tmp.display()))?;
            format!(
                "{} items in {} lists (a server reads {} per query unless retrieval.ivf_probe says otherwise)",
                index.len(),
                index.lists(),
                index.probe()
            )
        }
        Kind::Hnsw => {
            let params = AnnParams {
                connectivity: a.connectivity,
                expansion_add: a.expansion_add,
                ..AnnParams::default()
            };
            let index = model
                .build_index(params, threads)
                .map_err(anyhow::Error::msg)
                .context("building the index")?;
            index
                .save(tmp)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("writing {}", tmp.display()))?;
            format!(
                "{} items, connectivity {}, expansion_add {}",
                index.len(),
                a.connectivity,
                a.expansion_add
            )
        }
    })
}
