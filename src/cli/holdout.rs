use anyhow::Result;
use clap::Args;
use seqserve::data::{read_inputs, LogFormat, ReadOptions, Split};
use seqserve::eval::holdout::{build_holdout, write_holdout, Provenance};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct HoldoutArgs {
    /// The same log `seqserve train` reads.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum)]
    format: Option<LogFormat>,
    /// MovieLens users.dat: attributes written as each case's context.
    #[arg(long)]
    users: Option<PathBuf>,
    #[arg(long)]
    skip_malformed: bool,
    #[arg(long)]
    limit_users: Option<usize>,
    /// leave-one-out | leave-last-N | temporal:UNIX_SECONDS — the split `train --split` used.
    #[arg(long, default_value = "leave-one-out")]
    split: Split,
    /// Output JSON Lines file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: HoldoutArgs) -> Result<()> {
    crate::cli::check_output(&a.out)?;
    let opts = ReadOptions {
        skip_malformed: a.skip_malformed,
    };
    let (data, users) = read_inputs(&a.data, a.format, a.users.as_deref(), a.limit_users, &opts)?;
    let cases = build_holdout(&data, &a.split, users.as_ref())?;
    // What the leakage guard compares with a model's training record (same log, same split?).
    let provenance = Provenance {
        log: a.data.display().to_string(),
        log_sha256: seqserve::data::fingerprint::sha256_file(&a.data)?,
        split: a.split,
    };
    write_holdout(&cases, Some(&provenance), &a.out)?;
    let relevant: usize = cases.iter().map(|c| c.relevant.len()).sum();
    println!(
        "wrote {}: {} cases ({} users in the log, {} skipped malformed lines), {:.2} relevant items per case, split {}",
        a.out.display(),
        cases.len(),
        data.users.len(),
        data.skipped.len(),
        relevant as f64 / cases.len().max(1) as f64,
        a.split
    );
    Ok(())
}
