//! `seqserve sweep`: train every point of a grid of `train` options and keep the configuration with
//! the best validation F1@K (the same selection rule as the epochs within one run; the test split
//! plays no part in the choice).
use super::train::{train_with, TrainArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// One axis of the grid: a `train` option (without dashes) and its comma-separated values, e.g.
    /// `--grid lr=5e-4,1e-3 --grid dropout=0.3,0.5` (4 configurations). Repeat for more axes.
    #[arg(long = "grid", required = true)]
    grid: Vec<String>,
    /// Sweep directory: one model per configuration, `sweep.json` (every configuration's validation
    /// metrics) and `best/` (a copy of the winner). No configuration reads the test split: evaluate
    /// the winner once with `seqserve evaluate`, or retrain it with `train`.
    #[arg(long)]
    out: PathBuf,
    /// Replace existing models in --out.
    #[arg(long)]
    force: bool,
    /// The `seqserve train` options every configuration shares, after `--` (no --out).
    #[arg(last = true, required = true)]
    train: Vec<String>,
}

/// `train`'s options parsed on their own; a grid value given after the shared options replaces it.
#[derive(Parser, Debug)]
#[command(name = "seqserve train", args_override_self = true)]
struct TrainCommand {
    #[command(flatten)]
    args: TrainArgs,
}

struct Point {
    label: String,
    argv: Vec<String>,
}

/// Every combination of the axes, in order (the last axis varies fastest).
fn points(grid: &[String], shared: &[String], out: &Path, force: bool) -> Result<Vec<Point>> {
    let mut axes = Vec::new();
    for g in grid {
        let (key, values) = g
            .split_once('=')
            .with_context(|| format!("--grid {g:?}: expected OPTION=VALUE[,VALUE...]"))?;
        let key = key.trim_start_matches('-');
        if key.is_empty() || values.is_empty() {
            bail!("--grid {g:?}: expected OPTION=VALUE[,VALUE...]");
        }
        if ["out", "resume", "stop-after", "force"].contains(&key) {
            bail!("--grid {key}: the sweep sets this itself");
        }
        if key == "k" {
            // Configurations are compared by validation F1@K: one K for all of them.
            bail!("--grid k: every configuration is chosen by the same F1@K; give --k after --");
        }
        if axes.iter().any(|(k, _)| k == key) {
            bail!("--grid {key} is given twice: list its values in one --grid");
        }
        let values: Vec<String> = values.split(',').map(str::to_string).collect();
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                bail!("--grid {g:?}: an empty value");
            }
            if values[..i].contains(v) {
                bail!("--grid {key}: {v:?} is listed twice");
            }
        }
        axes.push((key.to_string(), values));
    }
    let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
    for (key, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .map(|c| {
            // A directory name: a value such as a path keeps only its name-safe characters.
            let label = c
                .iter()
                .map(|(k, v)| format!("{k}-{v}"))
                .collect::<Vec<_>>()
                .join("_")
                .replace(
                    |ch: char| !(ch.is_ascii_alphanumeric() || "._-".contains(ch)),
                    "_",
                );
            let mut argv = vec!["seqserve".to_string(), "train".to_string()];
            argv.extend(shared.iter().cloned());
            for (k, v) in &c {
                argv.push(format!("--{k}"));
                argv.push(v.clone());
            }
            // The choice is made on validation; the test split is left for the winner alone.
            argv.push("--skip-test".into());
            argv.push("--out".into());
            argv.push(out.join(&label).display().to_string());
            if force {
                argv.push("--force".into());
            }
            Point { label, argv }
        })
        .try_fold(Vec::new(), |mut seen: Vec<Point>, p| {
            if seen.iter().any(|q| q.label == p.label) {
                bail!("two configurations would share the directory {:?}", p.label);
            }
            seen.push(p);
            Ok(seen)
        })
}

pub fn run(a: SweepArgs) -> Result<()> {
    if a.train
        .iter()
        .any(|t| t == "--out" || t.starts_with("--out="))
    {
        bail!("give --out to sweep itself (before --), not to the shared train options");
    }
    let points = points(&a.grid, &a.train, &a.out, a.force)?;
    // Every configuration is parsed before the first one trains: a typo fails now, not in hour 3.
    let parsed = points
        .iter()
        .map(|p| {
            TrainCommand::try_parse_from(&p.argv[1..])
                .map(|c| c.args)
                .map_err(|e| anyhow::anyhow!("configuration {}: {e}", p.label))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut rows = Vec::new();
    for (i, (p, args)) in points.iter().zip(parsed).enumerate() {
        eprintln!("sweep {}/{}: {}", i + 1, points.len(), p.label);
        let k = args.k;
        let out = train_with(args, p.argv.join(" "))?;
        let m = &out.model.manifest;
        let metrics = m.metrics.as_ref().context("trained model has no metrics")?;
        let t = m
            .training
            .as_ref()
            .context("trained model has no training record")?;
        let key = format!("f1@{k}");
        rows.push(serde_json::json!({
            "label": p.label,
            "command": p.argv.join(" "),
            "selection": key,
            "validation_score": metrics.validation[&key],
            "best_epoch": t.best_epoch,
            "epochs_run": t.epochs_run,
            "seconds_per_epoch": t.seconds_per_epoch,
            "validation": metrics.validation,
        }));
    }
    let best = rows
        .iter()
        .max_by(|x, y| {
            let s = |r: &serde_json::Value| r["validation_score"].as_f64().unwrap_or(f64::MIN);
            s(x).total_cmp(&s(y))
        })
        .context("empty grid")?
        .clone();
    let label = best["label"].as_str().unwrap_or_default().to_string();
    copy_model(&a.out.join(&label), &a.out.join("best"))?;
    let summary = serde_json::json!({ "best": label, "configurations": rows });
    std::fs::write(
        a.out.join("sweep.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "configuration", "valid f1", "valid hr", "valid ndcg"
    );
    for r in &rows {
        let v = &r["validation"];
        println!(
            "{:<40} {:>10.5} {:>10.5} {:>10.5}{}",
            r["label"].as_str().unwrap_or_default(),
            r["validation_score"].as_f64().unwrap_or(f64::NAN),
            v["hr@10"].as_f64().unwrap_or(f64::NAN),
            v["ndcg@10"].as_f64().unwrap_or(f64::NAN),
            if r["label"] == best["label"] {
                "  <- best"
            } else {
                ""
            }
        );
    }
    println!(
        "best by validation: {label}; copied to {}",
        a.out.join("best").display()
    );
    Ok(())
}

fn copy_model(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_expands_to_every_combination_with_overrides_last() {
        let shared = vec![
            "--data".to_string(),
            "x.txt".into(),
            "--lr".into(),
            "1".into(),
        ];
        let grid = vec!["lr=2,3".to_string(), "--dropout=0.1,0.2,0.3".into()];
        let p = points(&grid, &shared, Path::new("/s"), false).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[0].label, "lr-2_dropout-0.1");
        assert_eq!(p[5].label, "lr-3_dropout-0.3");
        let args = TrainCommand::try_parse_from(&p[5].argv[1..]).unwrap().args;
        assert_eq!(
            args.lr_value(),
            3.0,
            "the grid value overrides the shared one"
        );
        assert!(points(&["lr".to_string()], &shared, Path::new("/s"), false).is_err());
        assert!(points(&["out=a,b".to_string()], &shared, Path::new("/s"), false).is_err());
        let bad = points(
            &["no-such-option=1".to_string()],
            &shared,
            Path::new("/s"),
            false,
        )
        .unwrap();
        assert!(TrainCommand::try_parse_from(&bad[0].argv[1..]).is_err());
    }

    /// Grids that would train a configuration twice, compare different F1@K or write two
    /// configurations into one directory are refused before anything trains.
    #[test]
    fn ambiguous_grids_are_refused() {
        let refused = |grid: &[&str], needle: &str| {
            let grid: Vec<String> = grid.iter().map(|g| g.to_string()).collect();
            let e = points(&grid, &[], Path::new("/s"), false)
                .err()
                .unwrap_or_else(|| panic!("{grid:?} accepted"))
                .to_string();
            assert!(e.contains(needle), "{grid:?}: {e}");
        };
        refused(&["lr=1e-3,1e-3"], "listed twice");
        refused(&["lr=1e-3", "lr=2e-3"], "given twice");
        refused(&["k=5,10"], "the same F1@K");
        refused(&["lr=1e-3,"], "an empty value");
        refused(&["users=a/b,a_b"], "share the directory \"users-a_b\"");
        let p = points(&["users=dir/u.dat".into()], &[], Path::new("/s"), false).unwrap();
        assert_eq!(p[0].label, "users-dir_u.dat");
    }
}
