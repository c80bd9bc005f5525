use anyhow::Result;
use clap::Args;
use seqserve::data::{read_log, read_movielens_users, LogFormat, ReadOptions, Split};
use seqserve::eval::holdout::{build_holdout, write_holdout};
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
    let opts = ReadOptions {
        skip_malformed: a.skip_malformed,
    };
    let mut data = read_log(&a.data, a.format, &opts)?;
    if let Some(n) = a.limit_users {
        data.users.truncate(n);
    }
    let users = a
        .users
        .as_ref()
        .map(|p| read_movielens_users(p, &opts))
        .transpose()?;
    let cases = build_holdout(&data, &a.split, users.as_ref())?;
    write_holdout(&cases, &a.out)?;
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
