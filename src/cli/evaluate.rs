use anyhow::{bail, Context, Result};
use clap::Args;
use seqserve::eval::holdout::{read_holdout, resolve};
use seqserve::eval::leakage;
use seqserve::eval::report::{self, Report};
use seqserve::eval::{evaluate_cases, EvalOptions, EvalResult};
use seqserve::model::repository::{parse_spec, Repository};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Model directory, or with --repository NAME[:VERSION] (default: the newest version); repeat
    /// to compare models on the same cases (paired tests, Holm).
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// A model repository (`<name>/<version>/`): --model values are names in it.
    #[arg(long)]
    repository: Option<PathBuf>,
    /// Evaluate even when the holdout was cut from a model's training log by another split (its
    /// relevant items may be training data); the report is marked.
    #[arg(long)]
    allow_leakage: bool,
    /// JSON Lines holdout (see `seqserve holdout`).
    #[arg(long)]
    holdout: PathBuf,
    /// Cut-offs, comma-separated.
    #[arg(long, default_value = "5,10,20", value_delimiter = ',')]
    k: Vec<usize>,
    /// Rank the user's history items too (by default they are masked).
    #[arg(long)]
    no_mask_seen: bool,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write per-case metrics as CSV (one row per model and case).
    #[arg(long)]
    per_case: Option<PathBuf>,
    /// Write an HTML report with plots (index.html and SVGs) into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(a: EvaluateArgs) -> Result<()> {
    if a.k.is_empty() || a.k.contains(&0) {
        bail!("--k needs positive cut-offs, e.g. 5,10,20");
    }
    // A bad output path fails now, not after the whole evaluation.
    for p in [&a.json, &a.per_case].into_iter().flatten() {
        crate::cli::check_output(p)?;
    }
    if let Some(d) = &a.report {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        crate::cli::check_output(&d.join("index.html"))?;
    }
    let device = seqserve::device::parse_device(&a.device)?;
    super::configure_threads(a.threads)?;
    let repo = a
        .repository
        .as_deref()
        .map(Repository::open)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // name, version label, directory
    let mut targets: Vec<(Option<(String, String)>, PathBuf)> = Vec::new();
    for m in &a.models {
        match &repo {
            Some(r) => {
                let (name, version) = parse_spec(m).map_err(anyhow::Error::msg)?;
                let (version, dir) = r
                    .locate(&name, version.as_deref())
                    .map_err(anyhow::Error::msg)?;
                targets.push((Some((name, version)), dir));
            }
            None => targets.push((None, PathBuf::from(m))),
        }
    }
    let holdout = read_holdout(&a.holdout)?;
    let cases = holdout.cases;
    let opts = EvalOptions {
        ks: seqserve::eval::unique_cut_offs(&a.k),
        mask_seen: !a.no_mask_seen,
        batch_size: 256,
    };
    let mut names = Vec::new();
    let mut results: Vec<EvalResult> = Vec::new();
    let mut reports = Vec::new();
    let mut trainings = Vec::new();
    let mut leakage_found = false;
    for (id, dir) in &targets {
        let model = super::load_for_ranking(dir, device)?;
        let mut check = leakage::check(&model.manifest, holdout.provenance.as_ref());
        if check.is_leakage() {
            eprintln!(
                "\n{}\n!!! {}\n{}\n",
                "!".repeat(78),
                check.message,
                "!".repeat(78)
            );
            if !a.allow_leakage {
                leakage_found = true;
                continue;
            }
            check.allowed = true;
        } else if check.verdict == leakage::Verdict::Unchecked {
            eprintln!(
                "note: leakage not checked for {}: {}",
                dir.display(),
                check.message
            );
        }
        if leakage_found {
            continue;
        }
        let resolved = resolve(&model.manifest, &model.catalogue, &cases)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} with model {}", a.holdout.display(), dir.display()))?;
        let bar = seqserve::progress::Progress::new(
            cases.len() as u64,
            &format!("evaluating {} (cases)", model.manifest.name),
        );
        let r = evaluate_cases(&model, &resolved.cases, &opts, |d| {
            bar.set_position(d as u64)
        });
        bar.finish();
        let (mut name, version) = match id {
            Some((n, v)) => (n.clone(), v.clone()),
            None => (model.manifest.name.clone(), model.manifest.version.clone()),
        };
        if names.contains(&name) {
            name = match id {
                Some((n, v)) => format!("{n}:{v}"),
                None => dir.display().to_string(),
            };
        }
        if let Some(t) = model
            .manifest
            .training
            .as_ref()
            .filter(|t| !t.epochs.is_empty())
        {
            trainings.push((name.clone(), t.clone()));
        }
        let mut rep = report::model_report(&name, &version, &r, resolved.unknown_relevant);
        rep.leakage = Some(check);
        reports.push(rep);
        names.push(name);
        results.push(r);
    }
    if leakage_found {
        bail!(
            "refusing to evaluate: {} overlaps a model's training data (see above); \
             rebuild it with the model's split, or pass --allow-leakage to evaluate anyway",
            a.holdout.display()
        );
    }
    let comparisons = report::compare(&names, &results).map_err(anyhow::Error::msg)?;
    let rep = Report::new(
        &a.holdout.display().to_string(),
        cases.len(),
        &opts,
        reports,
        comparisons,
    );
    print!("{}", report::render(&rep));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep)? + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(d) = &a.report {
        let files = seqserve::eval::html::write_report(d, &rep, &results, &trainings)
            .map_err(anyhow::Error::msg)?;
        eprintln!(
            "wrote {} ({} files)",
            d.join("index.html").display(),
            files.len()
        );
    }
    if let Some(p) = &a.per_case {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        );
        write!(f, "model,case,user")?;
        for k in &opts.ks {
            for m in seqserve::eval::metrics::METRIC_NAMES {
                write!(f, ",{m}@{k}")?;
            }
        }
        writeln!(f)?;
        for (name, r) in names.iter().zip(&results) {
            for (i, (row, case)) in r.per_case.iter().zip(&cases).enumerate() {
                write!(f, "{name},{},{}", i + 1, case.user)?;
                for at in row {
                    for m in seqserve::eval::metrics::METRIC_NAMES {
                        write!(f, ",{}", at.get(m).unwrap_or(0.0))?;
                    }
                }
                writeln!(f)?;
            }
        }
        f.flush()?;
    }
    Ok(())
}
