//! `seqserve evaluate --report DIR`: an HTML page with the report's tables and three kinds of plot
//! (SVG, drawn with plotters): every metric@K per model with its 95% CI, each paired difference
//! with its CI, and the per-case distribution of NDCG at the largest K.
use super::report::{column, Report};
use super::runner::EvalResult;
use plotters::prelude::*;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Metrics plotted per model (all seven are in the tables).
const PLOTTED: [&str; 4] = ["ndcg", "hr", "f1", "recall"];
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

type Plot = Result<(), Box<dyn std::error::Error>>;

/// Writes `index.html` and its SVG plots into `dir` (created if missing). `results` are the
/// per-case results in the order of `report.models`. Returns the files written.
pub fn write_report(
    dir: &Path,
    report: &Report,
    results: &[EvalResult],
    trainings: &[(String, crate::model::manifest::TrainingRecord)],
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let mut plot = |name: &str, draw: &dyn Fn(&Path) -> Plot| -> Result<(), String> {
        let p = dir.join(name);
        draw(&p).map_err(|e| format!("cannot draw {}: {e}", p.display()))?;
        files.push(p);
        Ok(())
    };
    plot("metrics.svg", &|p| metrics_plot(p, report))?;
    let has_pairs = !report.comparisons.is_empty();
    if has_pairs {
        plot("differences.svg", &|p| differences_plot(p, report))?;
    }
    let k_last = *report.ks.last().unwrap_or(&10);
    let dist = format!("distribution_ndcg@{k_last}.svg");
    plot(&dist, &|p| distribution_plot(p, report, results, k_last))?;
    // Each model's training curves, from its manifest (models without a record are skipped).
    let mut curves = Vec::new();
    for (i, (name, t)) in trainings.iter().enumerate() {
        let file = format!("curves-{}.svg", i + 1);
        super::curves::draw(&dir.join(&file), &format!("{name}: training curves"), t)?;
        files.push(dir.join(&file));
        curves.push(file);
    }
    let mut html = page(report, has_pairs, &dist);
    if !curves.is_empty() {
        let imgs: String = curves
            .iter()
            .map(|f| format!("<img src=\"{f}\" alt=\"training curves\">\n"))
            .collect();
        html = html.replace(
            "</body></html>\n",
            &format!(
                "<h2>Training curves (from each model's manifest)</h2>\n{imgs}</body></html>\n"
            ),
        );
    }
    let index = dir.join("index.html");
    std::fs::write(&index, html).map_err(|e| format!("cannot write {}: {e}", index.display()))?;
    files.push(index);
    Ok(files)
}

/// One panel per plotted metric: x = K, one point with its CI bar per model (side by side).
fn metrics_plot(path: &Path, r: &Report) -> Plot {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    let n_models = r.models.len().max(1) as f64;
    for (panel, metric) in panels.iter().zip(PLOTTED) {
        let key = |k: &usize| format!("{metric}@{k}");
        let top = r
            .models
            .iter()
            .flat_map(|m| r.ks.iter().map(move |k| m.metrics[&key(k)].upper))
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{metric}@K, mean and 95% CI"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.5f64..(r.ks.len() as f64 - 0.5), 0.0..top)?;
        let ks = r.ks.clone();
        chart
            .configure_mesh()
            .x_labels(r.ks.len())
            .x_label_formatter(&|x| {
                let i = x.round() as usize;
                ks.get(i).map(|k| format!("K={k}")).unwrap_or_default()
            })
            .y_label_formatter(&|y| format!("{y:.3}"))
            .disable_x_mesh()
            .draw()?;
        for (mi, m) in r.models.iter().enumerate() {
            let offset = (mi as f64 - (n_models - 1.0) / 2.0) * 0.6 / n_models;
            let c = colour(mi);
            let pts: Vec<(f64, &super::stats::ConfidenceInterval)> =
                r.ks.iter()
                    .enumerate()
                    .map(|(ki, k)| (ki as f64 + offset, &m.metrics[&key(k)]))
                    .collect();
            chart.draw_series(pts.iter().map(|(x, ci)| {
                ErrorBar::new_vertical(*x, ci.lower, ci.mean, ci.upper, c.stroke_width(2), 8)
            }))?;
            chart
                .draw_series(
                    pts.iter()
                        .map(|(x, ci)| Circle::new((*x, ci.mean), 4, c.filled())),
                )?
                .label(format!("{} {}", m.model, m.version))
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Each paired comparison (a − b) per metric@K: the mean difference and its 95% bootstrap CI,
/// with the zero line; a bar that misses zero is a difference the data support.
fn differences_plot(path: &Path, r: &Report) -> Plot {
    let rows = &r.comparisons;
    let h = (120 + 28 * rows.len()) as u32;
    let root = SVGBackend::new(path, (1000, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let span = rows
        .iter()
        .map(|c| c.test.diff_ci.lower.abs().max(c.test.diff_ci.upper.abs()))
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.1;
    let labels: Vec<String> = rows
        .iter()
        .map(|c| format!("{} − {}  {}", c.a, c.b, c.metric))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "paired difference a − b, mean and 95% bootstrap CI",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(260)
        .build_cartesian_2d(-span..span, -0.5f64..(rows.len() as f64 - 0.5))?;
    chart
        .configure_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() > 1e-9 || i < 0.0 {
                return String::new();
            }
            labels.get(i as usize).cloned().unwrap_or_default()
        })
        .x_label_formatter(&|x| format!("{x:+.3}"))
        .disable_y_mesh()
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(0.0, -0.5), (0.0, rows.len() as f64 - 0.5)],
        BLACK.mix(0.5),
    ))?;
    for (i, c) in rows.iter().enumerate() {
        let ci = &c.test.diff_ci;
        let supported = ci.lower > 0.0 || ci.upper < 0.0;
        let col = if supported { colour(3) } else { colour(0) };
        let y = i as f64;
        chart.draw_series(std::iter::once(ErrorBar::new_horizontal(
            y,
            ci.lower,
            c.test.mean_diff,
            ci.upper,
            col.stroke_width(2),
            8,
        )))?;
        chart.draw_series(std::iter::once(Circle::new(
            (c.test.mean_diff, y),
            4,
            col.filled(),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// The per-case NDCG@K of the cases with a hit (20 bins over (0, 1], as a share of those cases),
/// one bar per model in each bin; the share of misses (NDCG 0, usually most cases) is in the title,
/// since a bar for it would flatten everything else.
fn distribution_plot(path: &Path, r: &Report, results: &[EvalResult], k: usize) -> Plot {
    const BINS: usize = 20;
    let j = r.ks.iter().position(|x| *x == k).unwrap_or(0);
    let mut misses = Vec::new();
    let shares: Vec<Vec<f64>> = results
        .iter()
        .map(|res| {
            let col = column(res, "ndcg", j);
            let hits: Vec<f64> = col.iter().copied().filter(|v| *v > 0.0).collect();
            misses.push(1.0 - hits.len() as f64 / col.len().max(1) as f64);
            let mut h = [0.0; BINS];
            for v in &hits {
                h[((v * BINS as f64) as usize).min(BINS - 1)] += 1.0;
            }
            h.iter().map(|c| c / hits.len().max(1) as f64).collect()
        })
        .collect();
    let miss_text: Vec<String> = misses
        .iter()
        .map(|m| format!("{:.1}%", m * 100.0))
        .collect();
    let top = shares
        .iter()
        .flatten()
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1e-6)
        * 1.1;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "per-case NDCG@{k} of the cases with a hit (misses, NDCG 0: {})",
                miss_text.join(" / ")
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0f64..1.0, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(format!("NDCG@{k}"))
        .y_desc("share of cases with a hit")
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()?;
    let n = results.len().max(1) as f64;
    let w = 1.0 / BINS as f64;
    for (mi, h) in shares.iter().enumerate() {
        let c = colour(mi);
        let name = r
            .models
            .get(mi)
            .map(|m| format!("{} {}", m.model, m.version))
            .unwrap_or_default();
        chart
            .draw_series(h.iter().enumerate().map(|(b, share)| {
                let x0 = b as f64 * w + w * mi as f64 / n;
                Rectangle::new([(x0, 0.0), (x0 + w / n, *share)], c.mix(0.8).filled())
            }))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        // Upper left: a hit's NDCG@K is at least 1/log2(K+1) (0.23 at K=20), so that corner stays
        // empty, while the tallest bar is often at 1.0 (the hit ranked first), under UpperRight.
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(r: &Report, has_pairs: bool, dist: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>seqserve evaluation: {}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td{{white-space:nowrap}}th{{background:#f3f3f3}}\
         .leak{{background:#fdd;padding:.5em;border:2px solid #c00}}</style></head><body>\n",
        esc(&r.holdout)
    );
    let _ = write!(
        h,
        "<h1>Evaluation on {}</h1>\n<p>{} cases; ranking: {} ({} retrieval); seen items {}; ties: {}; {}</p>\n",
        esc(&r.holdout),
        r.cases,
        esc(&r.ranking),
        esc(&r.retrieval),
        if r.mask_seen { "masked" } else { "not masked" },
        esc(&r.tie_policy),
        esc(&r.f1_definition)
    );
    for m in &r.models {
        if let Some(l) = m.leakage.as_ref().filter(|l| l.is_leakage()) {
            let _ = writeln!(h, "<p class=\"leak\"><b>{}</b></p>", esc(&l.message));
        }
    }
    h.push_str("<h2>Metrics (mean [95% bootstrap CI])</h2>\n<img src=\"metrics.svg\" alt=\"metrics per model\">\n");
    for m in &r.models {
        let _ = write!(
            h,
            "<h3>{} (version {})</h3><p>{} cases, {} without a known relevant item, {} unknown relevant ids</p>\
             <table><tr><th>metric</th>",
            esc(&m.model),
            esc(&m.version),
            m.cases,
            m.cases_without_known_relevant,
            m.unknown_relevant_items
        );
        for k in &r.ks {
            let _ = write!(h, "<th>@{k}</th>");
        }
        h.push_str("</tr>\n");
        for metric in super::metrics::METRIC_NAMES {
            let _ = write!(h, "<tr><th>{metric}</th>");
            for k in &r.ks {
                let ci = &m.metrics[&format!("{metric}@{k}")];
                let _ = write!(
                    h,
                    "<td>{:.4} [{:.4}, {:.4}]</td>",
                    ci.mean, ci.lower, ci.upper
                );
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    if has_pairs {
        h.push_str(
            "<h2>Paired comparisons (same cases)</h2>\n<img src=\"differences.svg\" alt=\"paired differences\">\n\
             <table><tr><th>a − b</th><th>metric</th><th>diff</th><th>95% CI</th><th>t p</th>\
             <th>Wilcoxon p</th><th>randomization p</th><th>Holm (Wilcoxon)</th><th>Cohen's d</th></tr>\n",
        );
        for c in &r.comparisons {
            let t = &c.test;
            let _ = writeln!(
                h,
                "<tr><td>{} − {}</td><td>{}</td><td>{:+.5}</td><td>[{:+.5}, {:+.5}]</td><td>{:.2e}</td>\
                 <td>{:.2e}</td><td>{:.2e}</td><td>{:.2e}</td><td>{:.3}</td></tr>",
                esc(&c.a),
                esc(&c.b),
                esc(&c.metric),
                t.mean_diff,
                t.diff_ci.lower,
                t.diff_ci.upper,
                t.t_p_value,
                t.wilcoxon_p_value,
                t.randomization_p_value,
                c.holm_wilcoxon_p_value,
                t.cohens_d
            );
        }
        h.push_str("</table>\n");
    }
    let _ = write!(
        h,
        "<h2>Per-case distribution</h2>\n<img src=\"{dist}\" alt=\"per-case distribution\">\n</body></html>\n"
    );
    h
}
