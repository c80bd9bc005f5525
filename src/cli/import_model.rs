use anyhow::Result;
use clap::{Args, Subcommand};
use seqserve::importer::{self, Request, Source};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Subcommand, Debug)]
enum Kind {
    /// A RecBole SASRec checkpoint (saved/SASRec-*.pth); item ids rebuilt from its atomic files by
    /// RecBole (the venv of scripts/ops-tools.sh recbole).
    Recbole {
        #[command(flatten)]
        common: Common,
        /// The directory of the atomic files it was trained on (NAME.inter); default: the one its
        /// configuration records.
        #[arg(long)]
        dataset_dir: Option<PathBuf>,
    },
    /// A plain PyTorch state dict, read through a mapping file (e.g. mappings/pmixer-sasrec.toml).
    StateDict {
        #[command(flatten)]
        common: Common,
        /// Which key is which tensor, and the architecture (README: "Importing models trained elsewhere").
        #[arg(long)]
        mapping: PathBuf,
        /// Item ids, one per line for item indices 1..n; default: the indices themselves.
        #[arg(long)]
        items: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// The checkpoint (torch.save); read without running code from it.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model directory to write (refused if it exists, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Recorded in the manifest: 1-64 of A-Z a-z 0-9 . _ - (a repository's version directory).
    #[arg(long, default_value = "1")]
    version: String,
    /// Replace an existing --out (only once the new model is complete).
    #[arg(long)]
    force: bool,
}

pub fn run(a: ImportArgs) -> Result<()> {
    // argv[0] is wherever the binary happened to be: record the command as a user would type it.
    let command = std::iter::once("seqserve".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let (common, source) = match a.kind {
        Kind::Recbole {
            common,
            dataset_dir,
        } => (common, Source::Recbole { dataset_dir }),
        Kind::StateDict {
            common,
            mapping,
            items,
        } => (common, Source::StateDict { mapping, items }),
    };
    let req = Request {
        checkpoint: common.checkpoint,
        out: common.out,
        version: common.version,
        force: common.force,
        command,
        source,
    };
    let m = importer::import(&req)?;
    let a = &m.architecture;
    println!(
        "imported {} → {}: {} items, d {}, {} layers × {} heads, ffn {}, max_len {}, {:?}-LN, {:?}",
        req.checkpoint.display(),
        req.out.display(),
        a.n_items,
        a.d_model,
        a.n_layers,
        a.n_heads,
        a.ffn_dim,
        a.max_len,
        a.norm,
        a.activation
    );
    Ok(())
}
